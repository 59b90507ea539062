"""Reader studies: an admin or a lead physician defines a study (scans, readers, arm),
readers record a stage per scan, the owner may set adjudicated reference stages.

A study read is research, not care: it never creates a ReviewDecision, never changes a
review item and is never shown as a case's result. What a reader may read is still
decided by the care-unit rule: every scan of a study must be one every reader may see.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from accounts.audit import audit_record
from accounts.models import CareUnit, User
from accounts.roles import REVIEW_PERMISSION, STUDY_PERMISSION
from core.exceptions import ApplicationError, NotFound
from diagnostics.models import ModelVersion, ReaderStudy, ReaderStudyRead, ReaderStudyReference, Scan
from diagnostics.selectors.cases import cases_for_user

MAX_SCANS = 2000


class ReaderStudyError(ApplicationError):
    """A study definition, read or reference was refused; ``code`` says why."""


def _task_labels(task: str) -> list[str]:
    """The stage labels of the task's active model (else its newest version): the
    scale the readers choose from, so the AI's stages compare with theirs."""
    versions = ModelVersion.objects.filter(task=task)
    version = versions.filter(status=ModelVersion.Status.ACTIVE).first() or versions.order_by("-registered_at").first()
    if version is None:
        raise ReaderStudyError("no_stage_labels", f"no model is registered for the task {task!r}: no stage labels")
    return list(version.labels)


def recent_unit_scans(*, unit: CareUnit, count: int) -> list[UUID]:
    """The ``count`` most recent scans with a prediction of a care unit's cases (newest
    task first picks the task): how an admin, who may open no case, chooses scans
    without seeing any of them. Each reader must still be able to see every one."""
    if not 1 <= count <= MAX_SCANS:
        raise ReaderStudyError("invalid", f"choose between 1 and {MAX_SCANS} scans")
    scans = Scan.objects.filter(case__unit=unit, prediction__isnull=False).order_by("-uploaded_at", "-id")
    newest = scans.values_list("case__task", flat=True).first()
    if newest is None:
        raise ReaderStudyError("no_scans", f"the unit {unit.name} has no scan with a prediction")
    return list(scans.filter(case__task=newest).values_list("uuid", flat=True)[:count])


@transaction.atomic
def reader_study_create(
    *,
    acting_user: User,
    name: str,
    arm: str,
    readers: Sequence[User],
    scan_uuids: Sequence[UUID],
    client_address: str | None = None,
) -> ReaderStudy:
    """Define a study. Every scan must be one that every reader may see (their care
    units), and one the defining physician may see too; an admin, who sees no clinical
    data, may define a study over scans it cannot open (the page then shows it only
    statistics). The AI-shown arm needs a prediction for every scan."""
    if not acting_user.has_perm(STUDY_PERMISSION):
        raise PermissionDenied("only admins and lead physicians define reader studies")
    name = name.strip()
    if not name:
        raise ReaderStudyError("invalid", "give the study a name")
    if arm not in ReaderStudy.Arm.values:
        raise ReaderStudyError("invalid", f"unknown arm {arm!r}: use unaided or ai_shown")
    readers = list({r.pk: r for r in readers}.values())
    if len(readers) < 2:
        raise ReaderStudyError("too_few_readers", "a study needs at least two readers to measure agreement")
    if any(r.pk == acting_user.pk for r in readers):
        # The owner sees every reader's answers on the study's page: reading too would not be blind.
        raise ReaderStudyError("owner_reads", "the study's owner sees every answer and cannot be one of its readers")
    for reader in readers:
        if not reader.is_active or not reader.has_perm(REVIEW_PERMISSION):
            raise ReaderStudyError("reader_not_physician", f"{reader.username} is not an active physician")
    wanted = list(dict.fromkeys(scan_uuids))
    if not wanted:
        raise ReaderStudyError("no_scans", "choose at least one scan")
    if len(wanted) > MAX_SCANS:
        raise ReaderStudyError("too_many_scans", f"a study holds at most {MAX_SCANS} scans")
    scans = list(Scan.objects.filter(uuid__in=wanted).select_related("case"))
    found = {s.uuid for s in scans}
    missing = [str(u) for u in wanted if u not in found]
    if missing:
        raise ReaderStudyError("scan_not_found", f"no such scan: {', '.join(missing[:5])}")
    case_ids = {s.case_id for s in scans}
    viewers = [*readers] + ([acting_user] if acting_user.has_perm(REVIEW_PERMISSION) else [])
    for viewer in viewers:
        seen = set(cases_for_user(user=viewer).filter(pk__in=case_ids).values_list("pk", flat=True))
        hidden = [str(s.uuid) for s in scans if s.case_id not in seen]
        if hidden:
            raise ReaderStudyError(
                "scan_not_visible",
                f"{viewer.username} may not see scan {', '.join(hidden[:5])}: choose scans of cases every reader's "
                "care units hold",
            )
    tasks = {s.case.task for s in scans}
    if len(tasks) != 1 or "" in tasks:
        raise ReaderStudyError("mixed_tasks", "every scan of a study must be of the same task")
    task = tasks.pop()
    if arm == ReaderStudy.Arm.AI_SHOWN:
        without = [str(s.uuid) for s in scans if not hasattr(s, "prediction")]
        if without:
            raise ReaderStudyError(
                "scan_without_prediction", f"the AI-shown arm needs a prediction for scan {', '.join(without[:5])}"
            )
    study = ReaderStudy(name=name, arm=arm, task=task, labels=_task_labels(task), created_by=acting_user)
    study.full_clean()
    study.save()
    study.readers.set(readers)
    study.scans.set(scans)
    audit_record(
        actor=acting_user,
        action="reader_study.create",
        obj=study,
        data={
            "name": study.name,
            "arm": study.arm,
            "task": task,
            "labels": study.labels,
            "readers": sorted(str(r.uuid) for r in readers),
            "scans": sorted(str(s.uuid) for s in scans),
        },
        client_address=client_address,
    )
    return study


def _study_scan(*, study: ReaderStudy, scan_uuid: UUID) -> Scan:
    try:
        return study.scans.get(uuid=scan_uuid)
    except Scan.DoesNotExist as exc:
        raise NotFound("no such scan in this study") from exc


@transaction.atomic
def reader_study_read_record(
    *, acting_user: User, study: ReaderStudy, scan_uuid: UUID, stage: str, client_address: str | None = None
) -> ReaderStudyRead:
    """A reader's stage for one scan of the study, recorded once. Not a sign-off:
    nothing of the case's review changes."""
    if not study.readers.filter(pk=acting_user.pk).exists() or not acting_user.has_perm(REVIEW_PERMISSION):
        raise NotFound("no such reader study")
    scan = _study_scan(study=study, scan_uuid=scan_uuid)
    if not cases_for_user(user=acting_user).filter(pk=scan.case_id).exists():
        raise NotFound("no such scan in this study")  # the reader left the scan's care unit
    if stage not in study.labels:
        raise ReaderStudyError("invalid_stage", f"choose one of the study's stages: {', '.join(study.labels)}")
    read = ReaderStudyRead(study=study, reader=acting_user, scan=scan, stage=stage)
    read.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            read.save()
    except IntegrityError as exc:
        raise ReaderStudyError("already_read", "you have already recorded a stage for this scan") from exc
    audit_record(
        actor=acting_user,
        action="reader_study.read",
        obj=read,
        data={"study": str(study.uuid), "scan": str(scan.uuid), "stage": stage},
        client_address=client_address,
    )
    return read


@transaction.atomic
def reader_study_reference_set(
    *, acting_user: User, study: ReaderStudy, scan_uuid: UUID, stage: str, client_address: str | None = None
) -> ReaderStudyReference | None:
    """The owner sets (or, with an empty stage, clears) a scan's adjudicated stage."""
    if study.created_by_id != acting_user.pk or not acting_user.has_perm(STUDY_PERMISSION):
        raise NotFound("no such reader study")
    scan = _study_scan(study=study, scan_uuid=scan_uuid)
    if stage and stage not in study.labels:
        raise ReaderStudyError("invalid_stage", f"choose one of the study's stages: {', '.join(study.labels)}")
    old = ReaderStudyReference.objects.select_for_update().filter(study=study, scan=scan).first()
    old_stage = old.stage if old else ""
    if old_stage == stage:
        return old
    if not stage:
        assert old is not None
        old.delete()
        reference = None
    elif old is None:
        reference = ReaderStudyReference.objects.create(study=study, scan=scan, stage=stage, set_by=acting_user)
    else:
        old.stage, old.set_by = stage, acting_user
        old.save(update_fields=["stage", "set_by"])
        reference = old
    audit_record(
        actor=acting_user,
        action="reader_study.reference",
        obj=study,
        data={"scan": str(scan.uuid), "old": old_stage, "new": stage},
        client_address=client_address,
    )
    return reference


def reader_study_export_recorded(*, acting_user: User, study: ReaderStudy, client_address: str | None = None) -> None:
    """The owner downloaded the study's reads and statistics."""
    audit_record(actor=acting_user, action="reader_study.export", obj=study, data={}, client_address=client_address)


def reader_study_opened(*, acting_user: User, study: ReaderStudy, client_address: str | None = None) -> None:
    """The owner opened the study's statistics (the reads of many scans)."""
    audit_record(actor=acting_user, action="view", obj=study, data={}, client_address=client_address)
