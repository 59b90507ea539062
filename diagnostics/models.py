"""Clinical data: cases, scans, inference jobs, predictions, the review queue and
physicians' signed decisions, plus the model registry.

Invariants live here as database constraints, so they hold whatever code path
writes (two workers, a duplicate delivery, a bug): one job and one prediction per
scan, one active model, a decision that is superseded at most once.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

PATIENT_REF_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "Use a pseudonymous reference: letters, digits, dot, dash or underscore (up to 64), never a name.",
    code="invalid_patient_ref",
)


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100)
    version = models.CharField(max_length=40)
    task = models.CharField(max_length=200)
    labels = models.JSONField(help_text="Ordered stage labels, least to most advanced.")
    bundle_path = models.CharField(max_length=500, help_text="Model bundle folder (manifest.json + .keras file).")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the model file, checked on register and on load.")
    metrics = models.JSONField(default=dict, blank=True, help_text="Validation metrics measured at training time.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    registered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="modelversion_unique_name_version"),
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="modelversion_one_active"),
            models.CheckConstraint(
                condition=Q(status__in=["draft", "active", "retired"]), name="modelversion_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class Case(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    patient_ref = models.CharField(
        max_length=64,
        validators=[PATIENT_REF_VALIDATOR],
        help_text="Pseudonymous patient reference. Never a name or a national identifier.",
    )
    body_site = models.CharField(max_length=100, help_text="Anatomical site the images show.")
    note = models.TextField(blank=True, max_length=2000)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cases")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Case {self.patient_ref}"


class Scan(models.Model):
    class Format(models.TextChoices):
        PNG = "PNG", "PNG"
        JPEG = "JPEG", "JPEG"
        TIFF = "TIFF", "TIFF"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="scans")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the stored bytes; also the storage address.")
    storage_name = models.CharField(max_length=200)
    original_name = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=10, choices=Format.choices)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["uploaded_at", "id"]
        constraints = [
            # The same bytes uploaded again by the same person to the same case are
            # recognised as a repeat, not a second scan.
            models.UniqueConstraint(fields=["case", "sha256", "uploaded_by"], name="scan_unique_repeat_upload"),
        ]

    def __str__(self) -> str:
        return f"Scan {self.uuid}"


class InferenceJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    scan = models.OneToOneField(Scan, on_delete=models.PROTECT, related_name="job")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="Why the last attempt failed; never patient data.")
    claimed_by = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="host:pid of the worker process that claimed the last attempt.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]), name="job_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.uuid} ({self.status})"


class Prediction(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    job = models.OneToOneField(InferenceJob, on_delete=models.PROTECT, related_name="prediction")
    # One prediction per scan, whatever the broker delivers twice.
    scan = models.OneToOneField(Scan, on_delete=models.PROTECT, related_name="prediction")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="predictions")
    labels = models.JSONField(help_text="The model's ordered stage labels at prediction time.")
    probabilities = models.JSONField(help_text="One probability per label, same order.")
    predicted_label = models.CharField(max_length=100)
    predicted_index = models.PositiveIntegerField(help_text="Position of the predicted stage in labels.")
    stage_rank = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="predicted_index scaled to 0..1 so stages of different label sets compare.",
    )
    confidence = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    input_sha256 = models.CharField(max_length=64)
    inference_ms = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        permissions = [("review_prediction", "Can review predictions and sign decisions")]

    def __str__(self) -> str:
        return f"Prediction {self.predicted_label} ({self.confidence:.2f})"

    @property
    def label_probabilities(self) -> list[tuple[str, float]]:
        return list(zip(self.labels, self.probabilities, strict=True))


class ReviewItem(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Awaiting review"
        SIGNED = "signed", "Signed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    prediction = models.OneToOneField(Prediction, on_delete=models.PROTECT, related_name="review_item")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["pending", "signed"]), name="reviewitem_status_valid"),
        ]

    def __str__(self) -> str:
        return f"Review {self.uuid} ({self.status})"


class ReviewDecision(models.Model):
    """A physician's signed decision. Never updated: a correction is a new decision
    that points at the one it supersedes."""

    class Outcome(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed"
        REJECTED = "rejected", "Rejected"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    review_item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="decisions")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    stage = models.CharField(max_length=100, help_text="The physician's stage: the result once signed.")
    reason = models.TextField(blank=True, max_length=2000, help_text="Why the prediction was rejected or corrected.")
    physician = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    signer_name = models.CharField(max_length=300, help_text="Printed name of the signer at signing time.")
    signed_at = models.DateTimeField(default=timezone.now)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )

    class Meta:
        ordering = ["signed_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(outcome__in=["confirmed", "rejected"]), name="decision_outcome_valid"),
            models.CheckConstraint(
                condition=Q(outcome="confirmed") | ~Q(reason=""), name="decision_reject_needs_reason"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.outcome} {self.stage} by {self.signer_name}"

    @property
    def meaning(self) -> str:
        if self.supersedes_id is not None:
            return "corrected"
        return self.outcome


class WorkerHeartbeat(models.Model):
    """The last sign of life of each Celery worker, written by the worker's main
    process; read by /health/. Holds no clinical data."""

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField()
    last_seen = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.hostname} ({self.last_seen:%Y-%m-%d %H:%M:%S})"
