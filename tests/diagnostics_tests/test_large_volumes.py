"""What keeps pages fast at 100k cases, as a user sees it: a worklist poll that finds
nothing new answers 304 and the list comes back when something in the user's unit
changes; counts stop a little past the page but "next" stays right; the viewer's
previous / next items follow the queue order. (Speed itself: bench/bench_pages.py.)"""

from __future__ import annotations

import types

import pytest
from django.urls import reverse

from core import pagination
from diagnostics.models import Case
from diagnostics.selectors.reviews import review_queue, review_queue_neighbours
from tests.factories import ReviewDecisionFactory, make_prediction, make_scan
from tests.helpers import api, login

pytestmark = pytest.mark.django_db


class _Clock:
    """The worklist version's clock: it also changes every WORKLIST_MAX_STALE_S (10 s)
    without any change, so a poll test on a busy machine could cross that boundary
    between two polls and see a 200 it did not cause."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr("diagnostics.selectors.worklists.time", types.SimpleNamespace(time=clock.time))
    return clock


def _poll(client, url: str, etag: str | None = None):  # type: ignore[no-untyped-def]
    return client.get(url, headers={"If-None-Match": etag} if etag else {})


def test_a_queue_poll_with_nothing_new_is_304_and_a_new_prediction_in_the_unit_shows(
    physician, clinician, other_unit_clinician, active_model, django_capture_on_commit_callbacks, clock
):
    client = login(physician)
    url = reverse("review_queue") + "?fragment=1"
    make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-Q1")
    first = _poll(client, url)
    assert first.status_code == 200 and b"PSN-Q1" in first.content
    etag = first["ETag"]
    assert _poll(client, url, etag).status_code == 304
    with django_capture_on_commit_callbacks(execute=True):  # as after the worker's commit
        make_prediction(other_unit_clinician, active_model, [0.3, 0.7], ref="PSN-OTHER", color=(9, 9, 9))
    assert _poll(client, url, etag).status_code == 304  # another unit's change is not this worklist's
    with django_capture_on_commit_callbacks(execute=True):
        make_prediction(clinician, active_model, [0.4, 0.6], ref="PSN-Q2", color=(8, 8, 8))
    changed = _poll(client, url, etag)
    assert changed.status_code == 200 and b"PSN-Q2" in changed.content and changed["ETag"] != etag


def test_a_signature_changes_the_queue_and_a_case_list_poll_sees_uploads(
    physician, clinician, active_model, django_capture_on_commit_callbacks, clock
):
    prediction = make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-S1")
    doctor = login(physician)
    queue_url = reverse("review_queue") + "?fragment=1"
    etag = _poll(doctor, queue_url)["ETag"]
    with django_capture_on_commit_callbacks(execute=True):
        ReviewDecisionFactory(review_item=prediction.review_item)  # a colleague of the unit signs
    assert b"PSN-S1" not in (after := _poll(doctor, queue_url, etag)).content and after.status_code == 200

    clerk = login(clinician)
    cases_url = reverse("case_list") + "?fragment=1"
    etag = _poll(clerk, cases_url)["ETag"]
    assert _poll(clerk, cases_url, etag).status_code == 304
    with django_capture_on_commit_callbacks(execute=True):
        make_scan(clinician, ref="PSN-NEW", color=(1, 1, 1))
    assert b"PSN-NEW" in _poll(clerk, cases_url, etag).content


def test_a_poll_with_nothing_new_still_gets_the_list_again_after_the_staleness_bound(
    physician, clinician, active_model, clock, settings
):
    client = login(physician)
    url = reverse("review_queue") + "?fragment=1"
    make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-T1")
    etag = _poll(client, url)["ETag"]
    clock.now += settings.WORKLIST_MAX_STALE_S - 1
    assert _poll(client, url, etag).status_code == 304
    clock.now += 1  # the bound passed: a change the counters missed cannot hide longer
    again = _poll(client, url, etag)
    assert again.status_code == 200 and b"PSN-T1" in again.content and again["ETag"] != etag


def test_the_poll_refuses_the_wrong_role_before_any_304(clinician):
    response = login(clinician).get(reverse("review_queue") + "?fragment=1", headers={"If-None-Match": '"x"'})
    assert response.status_code == 403


def test_counts_stop_past_the_page_and_next_stays_right(clinician, monkeypatch):
    monkeypatch.setattr(pagination, "LOOKAHEAD", 2)
    for i in range(6):
        make_scan(clinician, ref=f"PSN-P{i}", color=(i, 3, 3))
    client = api(clinician)
    first = client.get("/api/v1/cases/?page_size=1").json()
    assert (first["count"], first["count_exact"]) == (3, False)  # page 1 + 2 rows looked ahead: "3 or more"
    page = 1
    seen = []
    url = "/api/v1/cases/?page_size=1"
    while url:
        body = client.get(url).json()
        seen += [c["id"] for c in body["results"]]
        url = body["next"]
        page += 1
    assert len(seen) == Case.objects.count() == 6  # following next reaches every case
    assert body["count_exact"] is True and body["count"] == 6
    html = login(clinician).get(reverse("case_list")).content.decode()
    assert "Page" not in html  # one page of 25 holds them all: no pager


def test_neighbours_follow_the_queue_order(physician, clinician, active_model):
    a = make_prediction(clinician, active_model, [0.45, 0.55], ref="PSN-N1", color=(1, 5, 5))  # uncertain: first
    b = make_prediction(clinician, active_model, [0.05, 0.95], ref="PSN-N2", color=(2, 5, 5))
    c = make_prediction(clinician, active_model, [0.95, 0.05], ref="PSN-N3", color=(3, 5, 5))
    order = list(review_queue(user=physician))
    assert len(order) == 3
    first, middle, last = order
    assert review_queue_neighbours(user=physician, item=middle) == (first, last)
    assert review_queue_neighbours(user=physician, item=first) == (None, middle)
    assert review_queue_neighbours(user=physician, item=last) == (middle, None)
    ReviewDecisionFactory(review_item=middle)
    middle.refresh_from_db()
    assert review_queue_neighbours(user=physician, item=middle) == (None, first)  # signed: back to the head
    assert {a.review_item, b.review_item, c.review_item} == set(order)
