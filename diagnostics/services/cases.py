"""Cases and their scans: create a case, upload images to it (validated, de-identified,
encrypted, all or nothing), and the audited opening of a case or a scan."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from uuid import UUID

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from guardian.shortcuts import assign_perm

from accounts.audit import audit_record, record_view
from accounts.models import CareUnit, User
from accounts.roles import UPLOAD_PERMISSION
from diagnostics.intake import dicom, storage
from diagnostics.intake.validation import UploadRejected, validate_image
from diagnostics.models import (
    Case,
    InferenceJob,
    Scan,
)
from diagnostics.selectors.cases import case_get, scan_get
from diagnostics.selectors.model_registry import active_tasks
from diagnostics.services.job_queue import job_enqueue
from diagnostics.services.worklists import worklists_changed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingFile:
    name: str
    data: bytes


class Upload(Protocol):
    """An uploaded file as Django and DRF hand it over."""

    name: str | None

    def read(self, size: int = -1, /) -> bytes: ...


def incoming_files(uploads: Iterable[Upload]) -> list[IncomingFile]:
    """The uploads' bytes, each read to at most one byte past the size cap: enough for the
    validator to say "too large" without holding an arbitrarily large upload in memory."""
    limit = settings.UPLOAD_MAX_BYTES + 1
    return [IncomingFile(name=f.name or "", data=f.read(limit)) for f in uploads]


@dataclass
class UploadResult:
    created: list[Scan] = field(default_factory=list)
    repeated: list[Scan] = field(default_factory=list)


class UploadBatchRejected(Exception):
    """One or more files were refused; nothing of the batch was stored."""

    def __init__(self, errors: list[tuple[str, UploadRejected]]) -> None:
        super().__init__("; ".join(f"{name}: {err.message}" for name, err in errors))
        self.errors = errors


MAX_FILE_NAME = 255


def file_name_too_long(length: int) -> UploadRejected:
    return UploadRejected(
        "file_name_too_long",
        f"the file name has {length} characters; at most {MAX_FILE_NAME} are accepted: "
        "rename the file and upload it again",
    )


def _safe_filename(name: str) -> str:
    base = Path(name or "").name
    return base[:255]


def patient_ref_check(patient_ref: str) -> str:
    """The site's positive rule for pseudonyms (CANCERWEB_PSEUDONYM_PATTERN, the whole
    reference must match): the one check every door passes through, so the page, the
    API and a DICOM upload (whose stored Patient Name and ID are this reference) obey
    it alike. Answers the reference without surrounding spaces."""
    value = (patient_ref or "").strip()
    if not re.fullmatch(settings.PSEUDONYM_PATTERN, value):
        raise ValidationError(
            {
                "patient_ref": ValidationError(
                    f"the patient reference must be this site's pseudonym, matching the pattern "
                    f"{settings.PSEUDONYM_PATTERN} ({settings.PSEUDONYM_HINT}); never a name, birth date "
                    "or national identifier",
                    code="invalid_patient_ref",
                )
            }
        )
    return value


def case_create(
    *,
    acting_user: User,
    patient_ref: str,
    body_site: str,
    note: str = "",
    task: str | None = None,
    files: list[IncomingFile] | None = None,
    client_address: str | None = None,
    unit: CareUnit | None = None,
) -> Case:
    """Create a case in one of the creator's care units and, when files are given,
    upload them to it, all or nothing. With one unit the unit may be left out."""
    if not acting_user.has_perm("diagnostics.add_case"):
        raise PermissionDenied("your role cannot create cases")
    units = list(CareUnit.objects.filter(group__user=acting_user))
    if unit is None:
        if len(units) != 1:
            raise ValidationError(
                {"unit": "choose the care unit of this case" if units else "you belong to no care unit; ask an admin"}
            )
        unit = units[0]
    elif unit.pk not in {u.pk for u in units}:
        raise ValidationError({"unit": "you can create cases only in your own care units"})
    patient_ref = patient_ref_check(patient_ref)
    task = _case_task(task)
    with _stored_files_removed_on_failure() as created_names, transaction.atomic():
        case = Case(
            patient_ref=patient_ref,
            body_site=body_site.strip(),
            note=note,
            task=task,
            created_by=acting_user,
            unit=unit,
        )
        case.full_clean()
        case.save()
        # The unit's members see the case through this one grant; joining or
        # leaving the unit later changes who sees it without touching the case.
        assign_perm("diagnostics.view_case", unit.group, case)
        audit_record(
            actor=acting_user,
            action="case.create",
            obj=case,
            data={"new": {"body_site": case.body_site, "unit": str(unit.uuid), "task": case.task}},
            client_address=client_address,
        )
        worklists_changed(unit_ids=[unit.pk])
        if files:
            _scans_upload_inner(
                acting_user=acting_user,
                case=case,
                files=files,
                client_address=client_address,
                created_names=created_names,
            )
    return case


def _case_task(task: str | None) -> str:
    tasks = active_tasks()
    if task is None or not task.strip():
        if len(tasks) == 1:
            return tasks[0]
        if not tasks:
            # Nothing is active yet: the case waits without a task and its jobs fail
            # with a stated reason (or use the one model activated before they run).
            return ""
        raise ValidationError({"task": f"choose the task to analyse for: {'; '.join(tasks)}"})
    task = task.strip()
    if task not in tasks:
        raise ValidationError({"task": f"no active model answers '{task}'; choose one of: {'; '.join(tasks)}"})
    return task


def scans_upload(
    *, acting_user: User, case: Case, files: list[IncomingFile], client_address: str | None = None
) -> UploadResult:
    """Validate every file, then store them all and queue one inference job per new
    scan. If any file is refused, nothing is stored."""
    with _stored_files_removed_on_failure() as created_names, transaction.atomic():
        return _scans_upload_inner(
            acting_user=acting_user,
            case=case,
            files=files,
            client_address=client_address,
            created_names=created_names,
        )


@contextmanager
def _stored_files_removed_on_failure() -> Iterator[list[str]]:
    """All or nothing for stored bytes too: the transaction rolls the rows back, and the
    files stored on the way (their names collected in the list) are removed again, unless
    another scan already refers to the same content."""
    names: list[str] = []
    try:
        yield names
    except BaseException:
        _cleanup(names)
        raise


def _cleanup(names: list[str]) -> None:
    """Remove the objects a failed upload stored. When the database is what failed,
    delete without asking it; when the store is (down mid-upload), what stays behind
    is found and removed by the storage sweep once the store is back."""
    for name in names:
        try:
            try:
                storage.delete_if_unreferenced(name)
            except storage.StorageUnavailable:
                raise
            except Exception:  # the database may be the thing that failed
                storage.delete(name)
        except storage.StorageUnavailable:
            logger.warning("could not remove an object of a failed upload; the storage sweep will")


def _scans_upload_inner(
    *,
    acting_user: User,
    case: Case,
    files: list[IncomingFile],
    client_address: str | None,
    created_names: list[str],
) -> UploadResult:
    if not acting_user.has_perm(UPLOAD_PERMISSION):
        raise PermissionDenied("your role cannot upload scans")
    if case.unit_id is None or not acting_user.groups.filter(care_unit__id=case.unit_id).exists():
        raise PermissionDenied("only members of the case's care unit can add scans")
    if not files:
        raise UploadBatchRejected([("(no file)", UploadRejected("no_file", "choose at least one image to upload"))])
    if len(files) > settings.UPLOAD_MAX_FILES:
        raise UploadBatchRejected(
            [("(batch)", UploadRejected("too_many_files", f"at most {settings.UPLOAD_MAX_FILES} files per upload"))]
        )

    errors: list[tuple[str, UploadRejected]] = []
    checked = []
    for incoming in files:
        name = _safe_filename(incoming.name)
        full_name = Path(incoming.name or "").name
        if len(full_name) > MAX_FILE_NAME:
            errors.append((full_name[:60] + "…", file_name_too_long(len(full_name))))
            continue
        try:
            info = validate_image(
                data=incoming.data,
                filename=name,
                max_bytes=settings.UPLOAD_MAX_BYTES,
                max_pixels=settings.UPLOAD_MAX_PIXELS,
            )
        except UploadRejected as err:
            errors.append((name or "(unnamed)", err))
            continue
        checked.append((name, incoming.data, info))
    if errors:
        raise UploadBatchRejected(errors)

    result = UploadResult()
    seen: set[str] = set()
    for name, data, info in checked:
        if info.format == Scan.Format.DICOM:
            # De-identified before anything is stored: only the pseudonymous case
            # reference stays, and the stored (and hashed) bytes are the cleaned file.
            try:
                data = dicom.deidentify(data, pseudonym=case.patient_ref, uid_secret=settings.SECRET_KEY.encode())
                # What is stored is what the worker reads: it must pass validation too.
                dicom.check(data, max_pixels=settings.UPLOAD_MAX_PIXELS)
            except Exception as exc:  # a value pydicom read but cannot write: refuse, never store the original
                refused = UploadRejected("dicom_deidentification_failed", "the DICOM file could not be de-identified")
                raise UploadBatchRejected([(name or "(unnamed)", refused)]) from exc
        digest = storage.sha256_bytes(data)
        existing = Scan.objects.filter(case=case, sha256=digest, uploaded_by=acting_user).first()
        if existing is not None or digest in seen:
            if existing is not None:
                result.repeated.append(existing)
            continue
        seen.add(digest)
        storage_name, created = storage.store_bytes(data=data, sha256=digest)
        if created:
            created_names.append(storage_name)
        scan = Scan(
            case=case,
            sha256=digest,
            storage_name=storage_name,
            original_name=name,
            format=info.format,
            width=info.width,
            height=info.height,
            burned_in_annotation=info.burned_in_annotation,
            size_bytes=len(data),
            uploaded_by=acting_user,
        )
        scan.full_clean()
        scan.save()
        job = InferenceJob.objects.create(scan=scan)
        audit_record(
            actor=acting_user,
            action="scan.upload",
            obj=scan,
            data={"case": str(case.uuid), "sha256": digest, "format": info.format, "bytes": len(data)},
            client_address=client_address,
        )
        job_enqueue(job)
        result.created.append(scan)
    if result.created:
        worklists_changed(unit_ids=[case.unit_id])
    return result


def case_open(*, acting_user: User, case_uuid: UUID, client_address: str | None = None) -> Case:
    """A case opened for reading (its page or its API record): audited."""
    case = case_get(user=acting_user, case_uuid=case_uuid)
    record_view(actor=acting_user, obj=case, client_address=client_address)
    return case


def scan_open(*, acting_user: User, scan_uuid: UUID, client_address: str | None = None) -> Scan:
    """A scan opened for reading (its image, or its API record): audited."""
    scan = scan_get(user=acting_user, scan_uuid=scan_uuid)
    record_view(actor=acting_user, obj=scan, client_address=client_address)
    return scan
