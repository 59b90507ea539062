from __future__ import annotations

from accounts.models import User
from diagnostics import services
from diagnostics.models import ModelVersion, Prediction, Scan
from tests.conftest import image_bytes


def make_scan(user: User, *, color: tuple[int, int, int] = (200, 80, 120), ref: str = "PSN-1") -> Scan:
    case = services.case_create(
        acting_user=user,
        patient_ref=ref,
        body_site="lymph node",
        files=[services.IncomingFile(name="a.png", data=image_bytes(color=color))],
    )
    return case.scans.get()


def make_prediction(user: User, model: ModelVersion, probabilities: list[float], **kwargs: object) -> Prediction:
    """A prediction as the worker would store it, without running the network."""
    scan = make_scan(user, **kwargs)  # type: ignore[arg-type]
    scan.job.status = "running"
    scan.job.save()
    prediction = services.prediction_store(
        job_id=scan.job.id, model_version=model, probabilities=probabilities, inference_ms=1.0
    )
    assert prediction is not None
    return prediction


def store_heatmap(prediction: Prediction, png: bytes) -> None:
    """Attach a heat map to a prediction the way the worker does: through storage
    (content-addressed, encrypted at rest) and the prediction's field."""
    from diagnostics import storage

    name, _ = storage.store_bytes(data=png, sha256=storage.sha256_bytes(png))
    Prediction.objects.filter(pk=prediction.pk).update(heatmap_storage_name=name)
