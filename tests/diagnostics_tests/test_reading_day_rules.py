"""The server side of the reading-day pages: the case summary a partly signed case
gets, the new-case form that preselects no task, the dashboard's undefined figures and
accuracy interval (page and CSV), and the audit page's readable values."""

from __future__ import annotations

import csv
import io

import pytest
from django.conf import settings
from django.urls import reverse

from accounts.selectors import audit_values
from diagnostics.forms import CaseCreateForm
from diagnostics.ml.metrics import wilson_interval
from diagnostics.models import Case
from diagnostics.selectors.cases import ScanStatus, case_status_summary
from diagnostics.selectors.model_registry import active_tasks
from diagnostics.services.cases import case_create
from diagnostics.services.model_registry import model_register
from tests.factories import ReviewDecisionFactory, make_prediction
from tests.helpers import login

pytestmark = pytest.mark.django_db


def test_wilson_interval_against_hand_computed_values():
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(2, 2)  # type: ignore[misc]
    assert low == pytest.approx(0.3424, abs=1e-4) and high == 1.0
    low, high = wilson_interval(1, 2)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.0945, abs=1e-4), pytest.approx(0.9055, abs=1e-4))
    # 81 of 100: centre 0.7985, half-width 0.0763 (z = 1.96).
    low, high = wilson_interval(81, 100)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.7222, abs=1e-4), pytest.approx(0.8749, abs=1e-4))
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_interval(3, 2)


@pytest.mark.parametrize(
    ("codes", "summary"),
    [
        ([], "No images"),
        (["awaiting_review"] * 3, "Awaiting review"),
        (["signed"] * 2, "Signed"),
        (["signed", "signed", "awaiting_review"], "2 of 3 images signed; 1 awaiting review"),
        (["signed", "failed"], "1 of 2 images signed; 1 failed"),
        (["awaiting_review", "queued", "queued"], "1 of 3 images awaiting review; 2 queued"),
    ],
)
def test_a_case_summary_says_how_many_images_are_where(codes, summary):
    assert case_status_summary([ScanStatus(c, c) for c in codes]) == summary


def test_new_case_form_preselects_no_task_and_names_a_missing_one(clinician, active_model):
    # The second bundled model: two tasks are active, as in the demo.
    model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "busi-small-cnn", activate=True)
    form = CaseCreateForm(units=[], tasks=active_tasks())
    assert form.fields["task"].choices[0] == ("", "— choose the task —")  # type: ignore[attr-defined]
    assert form["task"].value() is None and form.fields["task"].required
    response = login(clinician).post(reverse("case_new"), {"patient_ref": "P-9", "body_site": "node"})
    assert response.status_code == 400
    assert "Choose the task to analyse for" in response.content.decode()
    # The service refuses it too, whatever door the request came through.
    with pytest.raises(Exception, match="choose the task to analyse for"):
        case_create(acting_user=clinician, patient_ref="P-10", body_site="node")
    assert not Case.objects.exists()


def test_dashboard_shows_undefined_figures_and_the_interval(clinician, physician, active_model):
    # Two signed items, both predicted "metastasis", one overruled: the model never
    # predicted "no-metastasis", so its precision (and F1) are undefined.
    for n, rejected in enumerate((False, True)):
        p = make_prediction(clinician, active_model, [0.2, 0.8], ref=f"PSN-W{n}", color=(n * 40, 9, 9))
        if rejected:
            ReviewDecisionFactory(review_item=p.review_item, physician=physician, outcome="rejected",
                                  stage="no-metastasis", reason="benign")  # fmt: skip
        else:
            ReviewDecisionFactory(review_item=p.review_item, physician=physician)
    client = login(physician)
    html = client.get(reverse("dashboard")).content.decode()
    assert "(95 % CI 0.095–0.905, Wilson)" in html
    assert "Small sample:" in html
    assert '<abbr title="undefined: no item to count">—</abbr>' in html
    rows = list(csv.DictReader(io.StringIO(client.get(reverse("dashboard_csv")).content.decode())))
    by = {(r["stage"], r["metric"]): r["value"] for r in rows}
    assert by[("no-metastasis", "precision")] == "" and by[("no-metastasis", "f1")] == ""
    assert by[("no-metastasis", "recall")] == "0.000000"
    assert float(by[("", "accuracy_ci95_low")]) == pytest.approx(0.0945, abs=1e-4)


def test_audit_values_read_as_words_not_literals():
    pairs = audit_values({"new": {"body_site": "node", "files": ["a.png", "b.png"]}, "ok": True, "reason": None})
    assert pairs == [("new.body site", "node"), ("new.files", "a.png, b.png"), ("ok", "yes"), ("reason", "—")]
