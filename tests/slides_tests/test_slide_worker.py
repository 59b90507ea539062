"""Slides through a real Celery worker and PostgreSQL: the upload's check and the slide
job run in the worker; the label is never served; a duplicate delivery stores the
slide-level result and the map once."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from accounts.models import AuditEvent
from diagnostics.models import InferenceJob, Prediction, ReviewItem, SlideUpload
from diagnostics.services.job_queue import job_send
from diagnostics.services.slides import slide_job_process
from tests.factories import make_case
from tests.helpers import api, login
from tests.slides_tests import slide_factory as f
from tests.slides_tests.test_slide_intake import _create, _patch

pytestmark = [pytest.mark.worker, pytest.mark.slides, pytest.mark.django_db(transaction=True)]


def _send(client, case, data: bytes, name: str) -> SlideUpload:  # type: ignore[no-untyped-def]
    url = _create(client, case, name, len(data))["Location"]
    offset = 0
    while offset < len(data):
        offset = int(_patch(client, url, offset, data[offset : offset + 1024 * 1024])["Upload-Offset"])
    assert client.post(url + "finish/", {"sha256": hashlib.sha256(data).hexdigest()}, format="json").status_code == 202
    return SlideUpload.objects.get(uuid=url.rstrip("/").rsplit("/", 1)[-1])


def _wait_for_review(upload: SlideUpload, seconds: float = 420) -> InferenceJob:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        upload.refresh_from_db()
        assert upload.status != "refused", upload.error
        if upload.scan_id:
            job = InferenceJob.objects.get(scan_id=upload.scan_id)
            assert job.status != "failed", job.error
            if job.status == "succeeded":
                return job
        time.sleep(0.5)
    raise AssertionError(f"the slide did not reach review: upload {upload.status}")


def test_a_shared_slide_goes_through_the_worker_to_review_and_a_duplicate_delivery_stores_it_once(
    celery_worker_process, active_model, clinician, physician
):  # type: ignore[no-untyped-def]
    case = make_case(clinician, n_files=0)
    data = (f.SHARED_SLIDES / "slide-01.tiff").read_bytes()
    job = _wait_for_review(_send(api(clinician), case, data, "slide-01.tiff"))
    prediction = Prediction.objects.get(job=job)
    scan = prediction.scan
    assert scan.sha256 == hashlib.sha256(data).hexdigest()  # no label to remove: stored as sent
    assert job.tiles_total == job.tiles_done == prediction.slide_summary["tissue_tiles"] > 300
    assert prediction.predicted_label == "metastasis" and prediction.regions
    # Its tissue is the kind the model was trained on: few tiles unlike it, no flag.
    assert not prediction.out_of_distribution
    assert prediction.slide_summary["outside_tiles"] < 0.1 * prediction.slide_summary["tissue_tiles"]
    assert prediction.slide_map_storage_name and prediction.heatmap_storage_name
    item = ReviewItem.objects.get(prediction=prediction)

    # The broker delivers the job again, and the service is called twice: one result.
    job_send(job.id)
    slide_job_process(job_id=job.id)
    slide_job_process(job_id=job.id)
    time.sleep(3)
    assert Prediction.objects.filter(scan=scan).count() == 1
    assert ReviewItem.objects.filter(prediction__scan=scan).count() == 1
    assert AuditEvent.objects.filter(action="prediction.create", object_id=str(prediction.uuid)).count() == 1

    # The physician reads the slide-level result and the tile map through the API.
    body = api(physician).get(reverse("api_review_item", args=[item.uuid])).json()
    assert body["slide"]["regions"][0]["rank"] == 1 and body["slide"]["tissue_tiles"] == job.tiles_total
    tile_map = api(physician).get(reverse("api_slide_map", args=[item.uuid])).json()
    assert len(tile_map["tiles"]) == job.tiles_total and tile_map["labels"] == ["no-metastasis", "metastasis"]
    assert api(clinician).get(reverse("api_slide_map", args=[item.uuid])).status_code == 403


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _has_label_colour(jpeg_or_png: bytes) -> bool:
    arr = np.asarray(Image.open(io.BytesIO(jpeg_or_png)).convert("RGB")).astype(int)
    magenta = (arr[..., 0] > 200) & (arr[..., 1] < 60) & (arr[..., 2] > 200)
    return bool(magenta.any())


def test_the_label_image_is_never_served(celery_worker_process, active_model, clinician, physician, tmp_path):  # type: ignore[no-untyped-def]
    case = make_case(clinician, n_files=0)
    # Real lymph-node tissue, so that the model answers and its regions are served (a
    # synthetic texture is outside what it was trained on: nothing would be shown).
    tissue = f.compose(f.cells_from(f.SHARED_SLIDES.parent / "pcam" / "valid" / "no-metastasis", 80), cols=10)
    assert not _has_label_colour(_png(tissue))  # so a magenta pixel served can only be the label's
    data = f.aperio_svs(tmp_path / "labelled.svs", image=tissue, mpp=0.972).read_bytes()
    job = _wait_for_review(_send(api(clinician), case, data, "labelled.svs"))
    scan = job.scan
    assert scan.slide_info["associated_removed"] == ["label", "macro"]
    item = ReviewItem.objects.get(prediction__scan=scan)
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    level_tiles = DeepZoomGenerator(openslide.OpenSlide(str(tmp_path / "labelled.svs")), 254, 1).level_tiles
    served = []
    for user in (clinician, physician):
        client = login(user)
        dzi = client.get(reverse("slide_dzi", args=[scan.uuid]))
        assert dzi.status_code == 200
        served.append(client.get(reverse("scan_image", args=[scan.uuid])).content)
        for level, (cols, rows) in enumerate(level_tiles):  # every tile of every Deep Zoom level
            for col in range(cols):
                for row in range(rows):
                    answer = client.get(reverse("slide_tile", args=[scan.uuid, level, col, row]))
                    assert answer.status_code == 200, (level, col, row)
                    served.append(answer.content)
    physician_client = login(physician)
    assert not item.prediction.out_of_distribution and item.prediction.regions
    for region in item.prediction.regions:
        answer = physician_client.get(reverse("slide_region", args=[item.uuid, region["rank"]]))
        assert answer.status_code == 200
        served.append(answer.content)
    assert len(served) > 20
    assert not any(_has_label_colour(body) for body in served)
    # The file uploaded did carry it, so a leak would have shown above.
    assert bytes(f.LABEL_RGB) * 8 in data


def test_a_slide_unlike_the_training_patches_is_withheld_on_the_page_and_in_the_api(
    celery_worker_process, active_model, clinician, physician, tmp_path
):  # type: ignore[no-untyped-def]
    """Breast ultrasound composed into a slide and sent to the lymph-node model: nearly
    every tissue tile is outside what the model was trained on, so the slide is, and its
    stage, probabilities, map and regions are withheld everywhere."""
    busi = f.SHARED_SLIDES.parent / "busi" / "benign"
    image = f.compose(f.cells_from(busi, 48), cols=8)
    data = f.composed_tiff(tmp_path / "ultrasound.tiff", image).read_bytes()
    case = make_case(clinician, n_files=0)
    job = _wait_for_review(_send(api(clinician), case, data, "ultrasound.tiff"))
    prediction = Prediction.objects.get(job=job)
    summary = prediction.slide_summary
    assert summary["tissue_tiles"] >= 40 and summary["outside_tiles"] >= summary["tissue_tiles"] // 2
    assert prediction.out_of_distribution and prediction.ood_reasons == ["slide_tiles_unlike_training_data"]
    event = AuditEvent.objects.get(action="prediction.create", object_id=str(prediction.uuid))
    assert event.data["out_of_distribution"] is True
    item = ReviewItem.objects.get(prediction=prediction)

    body = api(physician).get(reverse("api_review_item", args=[item.uuid])).json()
    assert body["out_of_distribution"] is True and body["prediction"] is None and body["slide"] is None
    assert body["ood_reasons"] == ["most of the slide's tissue is unlike the patches this model was trained on"]
    assert api(physician).get(reverse("api_slide_map", args=[item.uuid])).status_code == 404
    reader = login(physician)
    for region in prediction.regions:
        assert reader.get(reverse("slide_region", args=[item.uuid, region["rank"]])).status_code == 404
    page = reader.get(reverse("review_detail", args=[item.uuid])).content.decode()
    assert "Outside what this model was trained on" in page and "no suggested stage for this slide" in page
    assert prediction.predicted_label not in page.split('id="ood-warning"')[1].split("</div>")[0]
    assert "data-heatmap-url" not in page and 'class="region' not in page
