"""Reads of drift monitoring: the latest check of each active model version. Aggregates
over every care unit, so on the dashboard they are for admins (who manage the models);
a physician's dashboard counts their own units only."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import User
from diagnostics.models import DriftCheck, DriftReference, ModelVersion

MANAGE_MODELS = "diagnostics.change_modelversion"


@dataclass
class DriftStatus:
    model_version: ModelVersion
    reference: DriftReference | None
    check: DriftCheck | None


def drift_status_all() -> list[DriftStatus]:
    rows = []
    for mv in ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).order_by("task", "id"):
        rows.append(
            DriftStatus(
                model_version=mv,
                reference=DriftReference.objects.filter(model_version=mv).first(),
                check=DriftCheck.objects.filter(model_version=mv).first(),
            )
        )
    return rows


def drift_status(*, user: User) -> list[DriftStatus]:
    if not user.has_perm(MANAGE_MODELS):
        return []
    return drift_status_all()
