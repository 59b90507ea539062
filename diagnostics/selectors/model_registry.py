"""Reads of the model registry (metadata, not clinical data)."""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from accounts.models import User
from core.exceptions import NotFound
from diagnostics.inference import bundle_dir_for
from diagnostics.models import ModelVersion


def active_tasks() -> list[str]:
    """Tasks that have an active model, in a stable order: what a new case may choose.
    Not clinical data, so not scoped to a user."""
    return list(
        ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).order_by("task").values_list("task", flat=True)
    )


def stage_labels_known() -> list[str]:
    """Every stage label of every registered model, for the filters' choices."""
    seen: list[str] = []
    for labels in ModelVersion.objects.order_by("registered_at", "id").values_list("labels", flat=True):
        for label in labels:
            if label not in seen:
                seen.append(label)
    return seen


def models_for_user(*, user: User) -> QuerySet[ModelVersion]:
    """The model registry and its cards: metadata, no clinical data. Every signed-in user
    may read them: a clinician should be able to see what model analysed their images and
    how well it was measured to do."""
    if not user.is_authenticated:
        return ModelVersion.objects.none()
    versions = ModelVersion.objects.order_by("-registered_at", "-id")
    if not user.has_perm("diagnostics.change_modelversion"):
        # A candidate in shadow is the admins' business until it is activated.
        versions = versions.exclude(status=ModelVersion.Status.CANDIDATE)
    return versions


def model_get(*, user: User, model_uuid: UUID) -> ModelVersion:
    try:
        return models_for_user(user=user).get(uuid=model_uuid)
    except ModelVersion.DoesNotExist as exc:
        raise NotFound("no such model version") from exc


def model_card_text(*, model_version: ModelVersion) -> str:
    """The bundle's MODEL_CARD.md, or "" when the bundle has none or is not reachable
    from this host (not in its model folder, not in object storage)."""
    from diagnostics.ml.bundle import BundleError

    try:
        card_path = bundle_dir_for(model_version) / "MODEL_CARD.md"
    except BundleError:
        return ""
    return card_path.read_text() if card_path.is_file() else ""
