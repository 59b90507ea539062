"""The model registry: register a bundle, activate one version per task, retire."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.audit import audit_record
from accounts.models import User
from diagnostics.model_store import bundle_publish
from diagnostics.models import (
    ModelVersion,
)


def _bundle_folder(bundle: str | Path) -> Path:
    """The bundle's folder: a name inside MODEL_DIR, or an absolute path that lies there.
    Nothing outside it: no door (admin form, API, command line) may make the server read
    an arbitrary path."""
    root = Path(settings.MODEL_DIR).resolve()
    try:
        path = (root / bundle).resolve()
        usable = path.is_relative_to(root) and path != root and path.is_dir()
    except (OSError, ValueError):  # e.g. a name longer than the file system allows, a NUL byte
        usable = False
    if not usable:
        raise ValidationError(
            {"bundle": ValidationError(f"no bundle folder named '{bundle}' in the model folder", code="invalid_bundle")}
        )
    return path


def model_register(
    *,
    acting_user: User | None,
    bundle_dir: str | Path,
    activate: bool = False,
    task: str | None = None,
    force_labels: bool = False,
    candidate: bool = False,
) -> ModelVersion:
    """Register a model bundle from the model folder after checking its file against the
    manifest's hash. `task` overrides the manifest's task (to put a bundle under an
    existing task)."""
    from diagnostics.ml.bundle import BundleError, verify_bundle

    path = _bundle_folder(bundle_dir)
    try:
        manifest = verify_bundle(path)
    except BundleError as exc:
        raise ValidationError({"bundle": ValidationError(str(exc), code="invalid_bundle")}) from exc
    stored_path = str(path.relative_to(Path(settings.MODEL_DIR).resolve()))
    task = (task or manifest.task).strip()
    # Objects before rows (as for scans): once the version is registered, a worker host
    # that never saw the folder can fetch it. Re-registering publishes a bundle that was
    # registered before object storage was configured.
    bundle_publish(folder=path, model_sha256=manifest.model_sha256)
    with transaction.atomic():
        existing = ModelVersion.objects.filter(name=manifest.name, version=manifest.version).first()
        if existing is not None:
            if existing.sha256 != manifest.model_sha256:
                raise ValidationError(
                    {"version": f"{manifest.name} {manifest.version} is already registered with a different file"}
                )
            model_version = existing
        else:
            model_version = ModelVersion(
                name=manifest.name,
                version=manifest.version,
                task=task,
                labels=list(manifest.labels),
                bundle_path=stored_path,
                sha256=manifest.model_sha256,
                metrics=manifest.metrics,
                training_summary={
                    "data_summary": manifest.data_summary,
                    "library_versions": manifest.library_versions,
                    "training": manifest.metrics.get("training", {}),
                    # Vector scaling (diagnostics/ml/calibration.py) when the bundle uses it;
                    # `temperature` is then 1.0 and this is what the runner applies.
                    "calibration": dict(manifest.calibration),
                },
                temperature=manifest.temperature,
                uncertain_below=manifest.uncertain_below,
                registered_by=acting_user,
            )
            model_version.full_clean()
            model_version.save()
            if manifest.drift_reference:
                from diagnostics.models import DriftReference

                DriftReference.objects.create(
                    model_version=model_version,
                    source=DriftReference.Source.BUNDLE,
                    n=len(manifest.drift_reference.get("confidences") or []),
                    # The feature distances of the bundle's held-out images, when it has them.
                    stats={
                        **manifest.drift_reference,
                        "feature_scores": list(manifest.ood.get("reference_scores") or []),
                    },
                )
            audit_record(
                actor=acting_user,
                action="model.register",
                obj=model_version,
                data={"sha256": manifest.model_sha256, "task": task},
            )
        if candidate and not activate and model_version.status == ModelVersion.Status.DRAFT:
            model_version = model_make_candidate(acting_user=acting_user, model_version=model_version)
        if activate and model_version.status != ModelVersion.Status.ACTIVE:
            model_activate(acting_user=acting_user, model_version=model_version, force_labels=force_labels)
    return model_version


def model_activate(
    *, acting_user: User | None, model_version: ModelVersion, force_labels: bool = False
) -> ModelVersion:
    """Make a version the active one of its task, retiring the version it replaces.
    Past predictions keep the version they came from.

    A replacement whose ordered labels differ from the active version's is refused
    unless `force_labels`: a hospital expects a task's stage vocabulary to stay put
    (review forms, worklists and reports compare stages by these names and their
    order), so changing it is a deliberate, audited act, not a side effect of an
    upgrade."""
    with transaction.atomic():
        # Lock every version of the task so two activations cannot interleave.
        previous = list(
            ModelVersion.objects.select_for_update()
            .filter(task=model_version.task, status=ModelVersion.Status.ACTIVE)
            .exclude(pk=model_version.pk)
        )
        changed = [old for old in previous if list(old.labels) != list(model_version.labels)]
        if changed and not force_labels:
            old = changed[0]
            raise ValidationError(
                {
                    "labels": f"{model_version} has labels {list(model_version.labels)} but the active "
                    f"{old} of this task has {list(old.labels)}; activating it would change the task's "
                    "stages. Force it explicitly if that is intended."
                }
            )
        comparison = None
        was_candidate = model_version.status == ModelVersion.Status.CANDIDATE
        if was_candidate:
            from diagnostics.selectors.shadow import comparison_summary, shadow_comparison_data

            # What the candidate was activated on: the paired comparison at this moment.
            comparison = comparison_summary(shadow_comparison_data(model_version=model_version))
        for old in previous:
            old.status = ModelVersion.Status.RETIRED
            old.save(update_fields=["status"])
            audit_record(actor=acting_user, action="model.retire", obj=old, data={"replaced_by": str(model_version)})
        model_version.status = ModelVersion.Status.ACTIVE
        model_version.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="model.activate",
            obj=model_version,
            data={
                "task": model_version.task,
                "labels_changed_forced": bool(changed),
                "was_candidate": was_candidate,
                "shadow_comparison": comparison,
            },
        )
    return model_version


def model_make_candidate(*, acting_user: User | None, model_version: ModelVersion) -> ModelVersion:
    """Put a registered version in shadow beside its task's active version: the worker
    predicts with it too and stores what it says apart, shown to no physician. Its
    labels must be the active version's, since the comparison is stage by stage."""
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        if locked.status == ModelVersion.Status.ACTIVE:
            raise ValidationError(
                {"status": ValidationError(f"{locked} is the active version already", code="already_active")}
            )
        active = ModelVersion.objects.filter(task=locked.task, status=ModelVersion.Status.ACTIVE).first()
        if active is None:
            raise ValidationError(
                {
                    "task": ValidationError(
                        f"task '{locked.task}' has no active version to compare with", code="no_active"
                    )
                }
            )
        if list(active.labels) != list(locked.labels):
            raise ValidationError(
                {
                    "labels": ValidationError(
                        f"{locked} has labels {list(locked.labels)} but the active {active} has "
                        f"{list(active.labels)}: a shadow comparison needs the same stages",
                        code="labels_differ",
                    )
                }
            )
        previous = locked.status
        locked.status = ModelVersion.Status.CANDIDATE
        locked.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="model.candidate",
            obj=locked,
            data={"task": locked.task, "previous_status": previous, "compared_with": str(active)},
        )
    return locked


def model_retire(*, acting_user: User | None, model_version: ModelVersion) -> ModelVersion:
    """Retire a model version. Retiring the active one leaves no active model: new jobs
    fail with "no active model" until another is activated, which is what an admin
    who pulls a bad model wants."""
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        if locked.status == ModelVersion.Status.RETIRED:
            raise ValidationError(
                {"status": ValidationError("this model version is already retired", code="already_retired")}
            )
        previous = locked.status
        locked.status = ModelVersion.Status.RETIRED
        locked.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="model.retire",
            obj=locked,
            data={"previous_status": previous, "task": locked.task},
        )
    return locked
