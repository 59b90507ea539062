"""Whole-slide images: the resumable upload (the tus core protocol's writes), the intake
of a finished upload (SHA-256, reading, anonymisation, chunked encrypted storage, then
Scan + job), and the slide inference job (tiles through the model, probability map,
slide-level answer, review item). Everything a slide adds lives here; services/jobs.py
only sends a claimed slide job this way."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import User
from accounts.roles import UPLOAD_PERMISSION
from cancerweb.celery import app as celery_app
from core.exceptions import ApplicationError
from diagnostics.intake import slide_cache, storage
from diagnostics.intake.slides import (
    ASSOCIATED_NEVER_SERVED,
    MPP_MAX,
    MPP_MIN,
    MULTI_FILE_EXTENSIONS,
    SlideInfo,
    SlideRejected,
    accepted_slide_extensions,
    anonymise,
    probe,
    resolution,
)
from diagnostics.ml.ood import slide_reasons
from diagnostics.models import Case, InferenceJob, ModelVersion, Prediction, ReviewItem, Scan, SlideUpload
from diagnostics.services.job_queue import JobError, active_model_for_task, job_enqueue, job_fail, prediction_new

logger = logging.getLogger(__name__)

PROCESS_SLIDE_UPLOAD_TASK = "diagnostics.process_slide_upload"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UploadProblem(ApplicationError):
    """A refused resumable-upload request; ``status`` is the HTTP status tus expects."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.status = status


def _check_uploader(acting_user: User, case: Case) -> None:
    if not acting_user.has_perm(UPLOAD_PERMISSION):
        raise PermissionDenied("your role cannot upload slides")
    if case.unit_id is None or not acting_user.groups.filter(care_unit__id=case.unit_id).exists():
        raise PermissionDenied("only members of the case's care unit can add slides")


def _safe_filename(name: str) -> str:
    return PurePath(name or "").name[:255]


# --- the resumable upload ---------------------------------------------------------------


def slide_upload_create(
    *,
    acting_user: User,
    case: Case,
    filename: str,
    length: int,
    stated_mpp: float | None = None,
    client_address: str | None = None,
) -> SlideUpload:
    """Start a resumable upload (tus creation). Nothing is visible to anyone but the
    uploader until the whole slide has arrived and passed its checks."""
    _check_uploader(acting_user, case)
    name = _safe_filename(filename)
    if not name:
        raise UploadProblem("invalid", "name the file (tus metadata 'filename')")
    if len(PurePath(filename).name) > 255:
        raise UploadProblem(
            "file_name_too_long",
            f"the file name has {len(PurePath(filename).name)} characters; at most 255 are accepted: "
            "rename the file and upload it again",
        )
    extension = PurePath(name).suffix.lower()
    if extension in MULTI_FILE_EXTENSIONS:
        raise UploadProblem(
            "slide_multi_file",
            f"a {MULTI_FILE_EXTENSIONS[extension]} slide is an index file plus a folder of data files, which one "
            "upload cannot carry: export the slide as one file (SVS, tiled TIFF, NDPI or DICOM WSI) and upload that",
        )
    accepted = accepted_slide_extensions()
    if extension and extension not in accepted:
        raise UploadProblem(
            "unsupported_type", f"{extension} is not a whole-slide image format (accepted: {', '.join(accepted)})"
        )
    if length <= 0:
        raise UploadProblem("empty_file", "the file is empty")
    if length > settings.SLIDE_UPLOAD_MAX_BYTES:
        raise UploadProblem(
            "file_too_large",
            f"the file is {length:,} bytes; the limit for slides is {settings.SLIDE_UPLOAD_MAX_BYTES:,} bytes",
            status=413,
        )
    if stated_mpp is not None and not MPP_MIN <= stated_mpp <= MPP_MAX:
        raise UploadProblem(
            "invalid_resolution", f"the stated resolution must lie between {MPP_MIN} and {MPP_MAX} um per pixel"
        )
    now = timezone.now()
    with transaction.atomic():
        upload = SlideUpload(
            case=case,
            uploaded_by=acting_user,
            filename=name,
            length=length,
            stated_mpp=stated_mpp,
            updated_at=now,
            expires_at=now + timedelta(seconds=settings.SLIDE_UPLOAD_EXPIRY_S),
        )
        upload.full_clean()
        upload.save()
        audit_record(
            actor=acting_user,
            action="slide_upload.create",
            obj=upload,
            data={"case": str(case.uuid), "bytes": length},
            client_address=client_address,
        )
    return upload


def _expired(upload: SlideUpload, now: Any = None) -> bool:
    return upload.status == SlideUpload.Status.RECEIVING and upload.expires_at <= (now or timezone.now())


def slide_upload_append(
    *, acting_user: User, upload: SlideUpload, offset: int, data: bytes, declared_length: int
) -> int:
    """Store the next chunk of an upload (tus PATCH) at ``offset``; returns the new
    offset. The chunk is stored whole or not at all: a request cut short by a dropped
    connection stores nothing, and the client resumes from the last offset."""
    if upload.uploaded_by_id != acting_user.pk:
        raise PermissionDenied("only the uploader can continue an upload")
    if len(data) != declared_length:
        raise UploadProblem("upload_interrupted", "the request ended before its body was complete; nothing was stored")
    if len(data) > settings.SLIDE_CHUNK_BYTES:
        raise UploadProblem(
            "chunk_too_large",
            f"send at most {settings.SLIDE_CHUNK_BYTES:,} bytes per request (tus chunk size)",
            status=413,
        )
    with transaction.atomic():
        row = SlideUpload.objects.select_for_update().get(pk=upload.pk)
        if _expired(row):
            raise UploadProblem("upload_expired", "this upload expired; start it again", status=410)
        if row.status != SlideUpload.Status.RECEIVING:
            raise UploadProblem("upload_complete", "this upload is complete and no longer takes bytes", status=403)
        if offset != row.offset:
            raise UploadProblem(
                "offset_mismatch",
                f"the upload is at byte {row.offset:,}, not {offset:,}; resume from there",
                status=409,
            )
        if row.offset + len(data) > row.length:
            raise UploadProblem(
                "upload_too_long", f"the upload declared {row.length:,} bytes and this request goes past them", 413
            )
        if data:
            # Stored before the row moves on, under the row lock: two requests for the same
            # offset cannot both land, and a chunk whose commit failed is overwritten next time.
            storage.store_object(name=storage.chunk_name(row.storage_prefix, len(row.chunk_sizes)), data=data)
            row.chunk_sizes = [*row.chunk_sizes, len(data)]
            row.offset += len(data)
            now = timezone.now()
            row.updated_at = now
            row.expires_at = now + timedelta(seconds=settings.SLIDE_UPLOAD_EXPIRY_S)
            row.save(update_fields=["chunk_sizes", "offset", "updated_at", "expires_at"])
    upload.offset = row.offset
    return row.offset


def slide_upload_finish(
    *, acting_user: User, upload: SlideUpload, sha256: str, client_address: str | None = None
) -> SlideUpload:
    """The uploader's browser or client has sent every byte and gives the file's SHA-256;
    the slide is then checked in the background (see slide_upload_process). Calling it
    again with the same hash is a no-op."""
    if upload.uploaded_by_id != acting_user.pk:
        raise PermissionDenied("only the uploader can finish an upload")
    sha256 = (sha256 or "").strip().lower()
    if not _SHA256.match(sha256):
        raise UploadProblem("invalid", "give the file's SHA-256 as 64 hexadecimal digits")
    with transaction.atomic():
        row = SlideUpload.objects.select_for_update().get(pk=upload.pk)
        if row.status != SlideUpload.Status.RECEIVING:
            if row.claimed_sha256 == sha256:
                return row
            raise UploadProblem("upload_complete", "this upload was already finished", status=409)
        if _expired(row):
            raise UploadProblem("upload_expired", "this upload expired; start it again", status=410)
        if row.offset != row.length:
            raise UploadProblem(
                "upload_incomplete", f"{row.offset:,} of {row.length:,} bytes have arrived; send the rest first", 409
            )
        row.claimed_sha256 = sha256
        row.status = SlideUpload.Status.QUEUED
        row.updated_at = timezone.now()
        row.save(update_fields=["claimed_sha256", "status", "updated_at"])
        audit_record(
            actor=acting_user,
            action="slide_upload.finish",
            obj=row,
            data={"case": str(row.case.uuid), "sha256": sha256, "bytes": row.length},
            client_address=client_address,
        )
        upload_id = row.id
        transaction.on_commit(lambda: _send_process(upload_id))
    return row


def _send_process(upload_id: int) -> None:
    try:
        celery_app.send_task(PROCESS_SLIDE_UPLOAD_TASK, kwargs={"upload_id": upload_id}, queue="default")
    except Exception:  # broker down: the sweep sends it again
        logger.warning("could not enqueue slide upload %s; the sweep sends it later", upload_id, exc_info=True)


def slide_upload_cancel(*, acting_user: User, upload: SlideUpload, client_address: str | None = None) -> None:
    """tus termination: the uploader gives up an unfinished upload; its chunks go."""
    if upload.uploaded_by_id != acting_user.pk:
        raise PermissionDenied("only the uploader can cancel an upload")
    with transaction.atomic():
        row = SlideUpload.objects.select_for_update().get(pk=upload.pk)
        if row.status != SlideUpload.Status.RECEIVING:
            raise UploadProblem("upload_complete", "only an unfinished upload can be cancelled", status=409)
        audit_record(actor=acting_user, action="slide_upload.cancel", obj=row, data={}, client_address=client_address)
        prefix = row.storage_prefix
        row.delete()
        transaction.on_commit(lambda: storage.delete_prefix(prefix))


def slide_uploads_sweep(*, now: Any = None) -> dict[str, int]:
    """Periodic: delete expired unfinished uploads with their chunks; send again the
    checks whose message may be lost; put back checks whose worker was lost."""
    now = now or timezone.now()
    done = {"expired": 0, "resent": 0, "requeued": 0}
    expired = list(SlideUpload.objects.filter(status=SlideUpload.Status.RECEIVING, expires_at__lte=now)[:200])
    for upload in expired:
        with transaction.atomic():
            row = SlideUpload.objects.select_for_update(skip_locked=True).filter(pk=upload.pk).first()
            if row is None or not _expired(row, now):
                continue
            audit_record(actor=None, action="slide_upload.expire", obj=row, data={"bytes_received": row.offset})
            prefix = row.storage_prefix
            row.delete()
        storage.delete_prefix(prefix)
        done["expired"] += 1
    stale = now - timedelta(seconds=settings.JOB_QUEUED_DEADLINE_S)
    for upload_id in SlideUpload.objects.filter(status=SlideUpload.Status.QUEUED, updated_at__lt=stale).values_list(
        "id", flat=True
    ):
        SlideUpload.objects.filter(id=upload_id, status=SlideUpload.Status.QUEUED).update(updated_at=now)
        _send_process(upload_id)
        done["resent"] += 1
    lost = now - timedelta(seconds=settings.JOB_RUNNING_DEADLINE_S)
    for upload_id in SlideUpload.objects.filter(status=SlideUpload.Status.PROCESSING, updated_at__lt=lost).values_list(
        "id", flat=True
    ):
        if SlideUpload.objects.filter(id=upload_id, status=SlideUpload.Status.PROCESSING).update(
            status=SlideUpload.Status.QUEUED, updated_at=now
        ):
            _send_process(upload_id)
            done["requeued"] += 1
    return done


# --- intake of a finished upload --------------------------------------------------------


def _refuse(upload: SlideUpload, code: str, message: str) -> None:
    """Nothing of a refused slide is stored: its chunks are deleted, the reason kept."""
    with transaction.atomic():
        updated = SlideUpload.objects.filter(id=upload.id, status=SlideUpload.Status.PROCESSING).update(
            status=SlideUpload.Status.REFUSED, error_code=code, error=message, updated_at=timezone.now()
        )
        if updated:
            audit_record(actor=None, action="slide_upload.refuse", obj=upload, data={"code": code})
    storage.delete_prefix(upload.storage_prefix)


def _assemble_upload(upload: SlideUpload, target: Path) -> str:
    digest = hashlib.sha256()
    with open(target, "wb") as fh:
        for chunk in storage.iter_chunks(upload.storage_prefix, len(upload.chunk_sizes)):
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def slide_upload_process(*, upload_id: int) -> None:
    """Check a finished upload and make it a Scan, or refuse it with a reason. Idempotent:
    only the caller that moves it from queued to processing works on it."""
    claimed = SlideUpload.objects.filter(id=upload_id, status=SlideUpload.Status.QUEUED).update(
        status=SlideUpload.Status.PROCESSING, updated_at=timezone.now()
    )
    if not claimed:
        return
    upload = SlideUpload.objects.select_related("case", "uploaded_by").get(id=upload_id)
    workdir = Path(tempfile.mkdtemp(prefix="intake-", dir=slide_cache.root()))
    try:
        extension = PurePath(upload.filename).suffix.lower()
        path = workdir / f"upload{extension if extension.replace('.', '').isalnum() else ''}"
        received = _assemble_upload(upload, path)
        if path.stat().st_size != upload.length or received != upload.claimed_sha256:
            raise SlideRejected(
                "checksum_mismatch",
                "the file that arrived is not the one that was sent (its SHA-256 differs); upload it again",
            )
        info = probe(path, filename=upload.filename, max_pixels=settings.SLIDE_MAX_PIXELS)
        mpp_x, mpp_y, mpp_source = resolution(info, upload.stated_mpp)
        removed = anonymise(path, info)
        if removed:
            # Read the anonymised copy again: it must still be a readable slide without them.
            after = probe(path, filename=upload.filename, max_pixels=settings.SLIDE_MAX_PIXELS)
            if set(after.associated) & set(removed):
                raise SlideRejected("anonymisation_failed", "the label or macro image could not be removed")
            info.associated = after.associated
        stored_sha = _sha256_file(path) if removed else received
        _accept(upload, path, info, removed, stored_sha, received, mpp_x, mpp_y, mpp_source)
    except SlideRejected as exc:
        _refuse(upload, exc.code, exc.message)
    except (OperationalError, InterfaceError):
        raise  # the database went away: the sweep puts the check back in the queue
    except Exception as exc:
        logger.warning("slide upload %s could not be processed", upload.uuid, exc_info=True)
        _refuse(upload, "slide_unreadable", f"the slide could not be processed ({type(exc).__name__})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _accept(
    upload: SlideUpload,
    path: Path,
    info: SlideInfo,
    removed: list[str],
    stored_sha: str,
    received_sha: str,
    mpp_x: float,
    mpp_y: float,
    mpp_source: str,
) -> None:
    prefix, created = storage.store_file_chunks(path=path, sha256=stored_sha, chunk_bytes=settings.SLIDE_CHUNK_BYTES)
    size = path.stat().st_size
    kept = [name for name in info.associated if name in ASSOCIATED_NEVER_SERVED]
    try:
        with transaction.atomic():
            row = SlideUpload.objects.select_for_update().get(pk=upload.pk)
            if row.status != SlideUpload.Status.PROCESSING:
                return
            scan = Scan.objects.filter(case=row.case, sha256=stored_sha, uploaded_by=row.uploaded_by).first()
            if scan is None:
                scan = Scan(
                    case=row.case,
                    kind=Scan.Kind.SLIDE,
                    sha256=stored_sha,
                    storage_name=prefix,
                    original_name=row.filename,
                    format=Scan.Format.WSI,
                    width=info.width,
                    height=info.height,
                    size_bytes=size,
                    uploaded_by=row.uploaded_by,
                    mpp_x=mpp_x,
                    mpp_y=mpp_y,
                    chunk_bytes=settings.SLIDE_CHUNK_BYTES,
                    received_sha256=received_sha,
                    slide_info={
                        "vendor": info.vendor,
                        "format": info.format_name,
                        "levels": info.levels,
                        "mpp_source": mpp_source,
                        "objective_power": info.objective_power,
                        "associated_removed": removed,
                        "associated_kept_never_served": kept,
                    },
                )
                scan.full_clean()
                scan.save()
                job = InferenceJob.objects.create(scan=scan)
                audit_record(
                    actor=row.uploaded_by,
                    action="scan.upload",
                    obj=scan,
                    data={
                        "case": str(row.case.uuid),
                        "sha256": stored_sha,
                        "received_sha256": received_sha,
                        "format": info.vendor,
                        "bytes": size,
                        "kind": "slide",
                    },
                )
                audit_record(
                    actor=None,
                    action="slide.anonymise",
                    obj=scan,
                    data={"removed": removed, "kept_never_served": kept, "present_in_upload": removed + kept},
                )
                job_enqueue(job)
            row.status = SlideUpload.Status.ACCEPTED
            row.scan = scan
            row.updated_at = timezone.now()
            row.save(update_fields=["status", "scan", "updated_at"])
    except BaseException:
        if created:
            storage.delete_slide_if_unreferenced(prefix)
        raise
    # The worker's first read would decrypt it again: hand it the copy already here.
    slide_cache.adopt(sha256=stored_sha, name=upload.filename, source=path)
    storage.delete_prefix(upload.storage_prefix)


# --- slide inference --------------------------------------------------------------------


def _method_for(manifest: Any) -> Any:
    from diagnostics.ml.slides import SlideMethod

    params = {k: v for k, v in (manifest.slide_method or {}).items() if k in SlideMethod.__dataclass_fields__}
    return SlideMethod(**params)


def _progress_writer(job_id: int) -> Callable[[int, int], None]:
    last = [0.0]

    def write(done: int, total: int) -> None:
        now = time.monotonic()
        if done not in (0, total) and now - last[0] < 1.0:
            return  # at most one write a second: progress, not a log
        last[0] = now
        InferenceJob.objects.filter(id=job_id, status=InferenceJob.Status.RUNNING).update(
            tiles_done=done, tiles_total=total
        )

    return write


def slide_job_process(*, job_id: int) -> None:
    """Run a claimed slide job: every tissue tile through the task's active model, then
    the slide-level answer, stored once with its review item."""
    import openslide

    from diagnostics.inference import runner_for
    from diagnostics.ml import slides as ml_slides
    from diagnostics.ml.heatmap import colorize  # noqa: F401 - imported by overlay_rgba

    job = InferenceJob.objects.select_related("scan", "scan__case").get(id=job_id)
    scan = job.scan
    started = time.perf_counter()
    try:
        model_version = active_model_for_task(scan.case.task)
        runner = runner_for(model_version)
        model_mpp = runner.manifest.mpp
        if not model_mpp:
            raise JobError(
                "the active model does not state the micrometres per pixel it was trained at (mpp in its manifest), "
                "so it cannot be run on whole slides"
            )
        with slide_cache.local_copy(slide_cache.StoredSlide.of(scan), keep=False) as path:
            slide = openslide.OpenSlide(str(path))
            try:
                analysis = ml_slides.analyse(
                    slide,
                    slide_mpp=(float(scan.mpp_x or 0) + float(scan.mpp_y or 0)) / 2,
                    model_mpp=model_mpp,
                    input_size=runner.input_size,
                    labels=list(model_version.labels),
                    predict=runner.predict_tiles,
                    method=_method_for(runner.manifest),
                    batch_size=settings.SLIDE_BATCH_SIZE,
                    threads=settings.SLIDE_READ_THREADS,
                    progress=_progress_writer(job.id),
                    max_tiles=settings.SLIDE_MAX_TILES,
                )
            finally:
                slide.close()
    except ml_slides.SlideAnalysisError as exc:
        job_fail(job, JobError(str(exc)))
        return
    except slide_cache.SlideCacheError as exc:
        job_fail(job, JobError(str(exc)))
        return
    except Exception as exc:
        job_fail(job, exc)
        return
    try:
        slide_prediction_store(
            job_id=job.id,
            model_version=model_version,
            analysis=analysis,
            inference_ms=(time.perf_counter() - started) * 1000.0,
        )
    except Exception as exc:
        job_fail(job, exc)


def _overlay_png(analysis: Any) -> bytes:
    import io

    from PIL import Image

    from diagnostics.ml.slides import overlay_rgba

    out = io.BytesIO()
    Image.fromarray(overlay_rgba(analysis), mode="RGBA").save(out, format="PNG")
    return out.getvalue()


def slide_prediction_store(
    *, job_id: int, model_version: ModelVersion, analysis: Any, inference_ms: float
) -> Prediction | None:
    """Store a slide's prediction (slide-level probabilities, overlay, tile map, regions)
    and queue it for review, once: a job no longer running or already predicted is a
    duplicate delivery's and is left alone, and the one-to-one constraints on job and
    scan catch a concurrent duplicate."""
    import json

    overlay = _overlay_png(analysis)
    tile_map = json.dumps(analysis.tile_map(), separators=(",", ":")).encode()
    probabilities = [float(p) for p in analysis.slide_probabilities]
    try:
        with transaction.atomic():
            job = (
                InferenceJob.objects.select_for_update(of=("self",))
                .select_related("scan")
                .filter(id=job_id, status=InferenceJob.Status.RUNNING, prediction__isnull=True)
                .first()
            )
            if job is None:
                return None
            # Content-addressed: a second delivery that got this far stores the same objects.
            overlay_name, _ = storage.store_bytes(data=overlay, sha256=storage.sha256_bytes(overlay))
            map_name, _ = storage.store_bytes(data=tile_map, sha256=storage.sha256_bytes(tile_map))
            # No tissue, or mostly tissue unlike the model's training patches: the
            # slide's answer is withheld like an image's (diagnostics/ml/ood.py).
            reasons = slide_reasons(tissue_tiles=analysis.tissue_tiles, outside_tiles=analysis.outside_tiles)
            prediction = prediction_new(
                job=job,
                model_version=model_version,
                probabilities=probabilities,
                inference_ms=inference_ms,
                out_of_distribution=bool(reasons),
                ood_reasons=reasons,
                heatmap_storage_name=overlay_name,
                slide_map_storage_name=map_name,
                regions=[r.to_dict() for r in analysis.regions],
                slide_summary=analysis.summary(),
            )
            prediction.full_clean(exclude=["job", "scan", "model_version"], validate_unique=False)
            prediction.save()
            ReviewItem.objects.create(prediction=prediction)
            finished = timezone.now()
            total = analysis.tissue_tiles
            InferenceJob.objects.filter(id=job.id).update(
                status=InferenceJob.Status.SUCCEEDED,
                finished_at=finished,
                updated_at=finished,
                error="",
                tiles_done=total,
                tiles_total=total,
            )
            audit_record(
                actor=None,
                action="prediction.create",
                obj=prediction,
                data={
                    "model": str(model_version),
                    "predicted": prediction.predicted_label,
                    "uncertain": prediction.uncertain,
                    "out_of_distribution": prediction.out_of_distribution,
                    "scan": str(job.scan.uuid),
                    "kind": "slide",
                    "tissue_tiles": total,
                    "regions": len(prediction.regions),
                },
            )
            return prediction
    except IntegrityError:
        if Prediction.objects.filter(job_id=job_id).exists():
            return None
        raise
