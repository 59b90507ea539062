"""Reads of reader studies. Two views of a study, never mixed: its owner sees the
agreement statistics (and no images); each reader sees a blinded worklist of the study's
scans in an order of their own, their own answers only, and the AI's output only in the
AI-shown arm. Everyone else is told the study does not exist."""

from __future__ import annotations

import random
from dataclasses import dataclass
from uuid import UUID

import numpy as np
from django.db.models import QuerySet

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION, STUDY_PERMISSION
from core.exceptions import NotFound
from diagnostics.ml import agreement
from diagnostics.models import Prediction, ReaderStudy, ReaderStudyRead, ReaderStudyReference, ReviewItem, Scan
from diagnostics.selectors.cases import cases_for_user
from diagnostics.selectors.reviews import review_item_ai_hidden


def reader_studies_owned(*, user: User) -> QuerySet[ReaderStudy]:
    """Studies whose statistics this user may see: the ones they defined, while they
    hold the permission to define studies."""
    if not user.is_authenticated or not user.is_active or not user.has_perm(STUDY_PERMISSION):
        return ReaderStudy.objects.none()
    return ReaderStudy.objects.filter(created_by=user)


def reader_studies_to_read(*, user: User) -> QuerySet[ReaderStudy]:
    if not user.is_authenticated or not user.is_active or not user.has_perm(REVIEW_PERMISSION):
        return ReaderStudy.objects.none()
    return ReaderStudy.objects.filter(readers=user)


def reader_study_owned_get(*, user: User, study_uuid: UUID) -> ReaderStudy:
    try:
        return reader_studies_owned(user=user).get(uuid=study_uuid)
    except ReaderStudy.DoesNotExist as exc:
        raise NotFound("no such reader study") from exc


def reader_study_to_read_get(*, user: User, study_uuid: UUID) -> ReaderStudy:
    try:
        return reader_studies_to_read(user=user).get(uuid=study_uuid)
    except ReaderStudy.DoesNotExist as exc:
        raise NotFound("no such reader study") from exc


# --- the reader's worklist -------------------------------------------------------------


@dataclass(frozen=True)
class AiView:
    """What the AI-shown arm shows of a scan's prediction."""

    stage: str
    confidence: float
    probabilities: list[tuple[str, float]]
    heatmap_item: UUID | None  # the review item whose heat map the page may show


@dataclass(frozen=True)
class WorklistEntry:
    position: int  # 1-based, in this reader's order
    scan: Scan
    own_stage: str | None  # this reader's answer, once given


def _reader_order(study: ReaderStudy, reader: User, scans: list[Scan]) -> list[Scan]:
    """The study's scans shuffled for this reader: the same order every time they
    open it, a different one for each reader (so order effects do not line up)."""
    ordered = sorted(scans, key=lambda s: s.pk)
    random.Random(f"{study.seed}:{reader.pk}").shuffle(ordered)
    return ordered


def reader_study_ai(*, user: User, study: ReaderStudy, scan: Scan) -> AiView | None:
    """What the reader is shown of the AI on this scan: nothing in the unaided arm; in the
    AI-shown arm the prediction as the review screen would show it to this physician
    (nothing while blinded-first hides it, nothing for an input outside what the model
    was trained on, the heat map only where one is stored)."""
    if study.arm != ReaderStudy.Arm.AI_SHOWN:
        return None
    try:
        prediction = scan.prediction
        item = prediction.review_item
    except (Prediction.DoesNotExist, ReviewItem.DoesNotExist):
        return None
    if review_item_ai_hidden(user=user, item=item) or prediction.out_of_distribution:
        return None
    return AiView(
        stage=prediction.predicted_label,
        confidence=prediction.confidence,
        probabilities=prediction.label_probabilities,
        heatmap_item=item.uuid if prediction.heatmap_storage_name else None,
    )


def reader_worklist(*, user: User, study: ReaderStudy) -> list[WorklistEntry]:
    """The study's scans this reader may (still) see, in their own order, with their
    own answers only. No case, patient reference or other reader's answer is in it."""
    visible = cases_for_user(user=user).values("id")
    scans = list(study.scans.filter(case_id__in=visible).select_related("prediction__review_item"))
    own = dict(
        ReaderStudyRead.objects.filter(study=study, reader=user).values_list("scan_id", "stage"),
    )
    entries = []
    for n, scan in enumerate(_reader_order(study, user, scans), start=1):
        entries.append(WorklistEntry(position=n, scan=scan, own_stage=own.get(scan.pk)))
    return entries


# --- the owner's statistics ------------------------------------------------------------


@dataclass(frozen=True)
class StudyResults:
    study: ReaderStudy
    labels: list[str]
    readers: list[User]
    scans: list[Scan]
    reads_done: dict[int, int]  # reader pk -> scans read
    stats: agreement.StudyStatistics
    ai_n: int  # scans with an AI prediction on the study's labels


def reader_name(user: User) -> str:
    return user.get_full_name() or user.username


def _matrix(study: ReaderStudy) -> tuple[list[User], list[Scan], np.ndarray, np.ndarray, np.ndarray]:
    labels = list(study.labels)
    index = {label: i for i, label in enumerate(labels)}
    readers = list(study.readers.order_by("username"))
    scans = list(study.scans.order_by("pk").select_related("prediction"))
    row = {scan.pk: n for n, scan in enumerate(scans)}
    col = {reader.pk: n for n, reader in enumerate(readers)}
    ratings = np.full((len(scans), len(readers)), agreement.MISSING, dtype=np.int64)
    for reader_id, scan_id, stage in ReaderStudyRead.objects.filter(study=study).values_list(
        "reader_id", "scan_id", "stage"
    ):
        if reader_id in col and scan_id in row and stage in index:
            ratings[row[scan_id], col[reader_id]] = index[stage]
    ai = np.full(len(scans), agreement.MISSING, dtype=np.int64)
    for n, scan in enumerate(scans):
        try:
            prediction = scan.prediction
        except Prediction.DoesNotExist:
            continue
        # Only a prediction on the study's own labels compares with the readers' stages.
        if list(prediction.labels) == labels:
            ai[n] = prediction.predicted_index
    reference = np.full(len(scans), agreement.MISSING, dtype=np.int64)
    for scan_id, stage in ReaderStudyReference.objects.filter(study=study).values_list("scan_id", "stage"):
        if scan_id in row and stage in index:
            reference[row[scan_id]] = index[stage]
    return readers, scans, ratings, ai, reference


def reader_study_results(*, study: ReaderStudy, replicates: int = agreement.DEFAULT_REPLICATES) -> StudyResults:
    """Every agreement figure of the study (see diagnostics.ml.agreement), computed
    from the reads as they are now; the study's seed fixes the bootstrap."""
    readers, scans, ratings, ai, reference = _matrix(study)
    stats = agreement.study_statistics(
        ratings, k=len(study.labels), ai=ai, reference=reference, replicates=replicates, seed=study.seed
    )
    done = {reader.pk: int((ratings[:, n] != agreement.MISSING).sum()) for n, reader in enumerate(readers)}
    return StudyResults(
        study=study,
        labels=list(study.labels),
        readers=readers,
        scans=scans,
        reads_done=done,
        stats=stats,
        ai_n=int((ai != agreement.MISSING).sum()),
    )


def reader_study_reads(*, study: ReaderStudy) -> QuerySet[ReaderStudyRead]:
    """Every read of the study, for its owner's export."""
    return ReaderStudyRead.objects.filter(study=study).select_related("reader", "scan").order_by("scan_id", "reader_id")


def reader_study_references(*, study: ReaderStudy) -> dict[int, str]:
    return dict(ReaderStudyReference.objects.filter(study=study).values_list("scan_id", "stage"))
