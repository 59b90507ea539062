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
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

PATIENT_REF_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "Use a pseudonymous reference: letters, digits, dot, dash or underscore (up to 64), never a name.",
    code="invalid_patient_ref",
)


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        # Runs in shadow beside the active version of its task: the worker predicts with
        # it too, its output is stored apart (ShadowPrediction) and shown to no one but
        # admins on the comparison page, until it is activated or retired.
        CANDIDATE = "candidate", "Candidate (shadow)"
        RETIRED = "retired", "Retired"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100)
    version = models.CharField(max_length=40)
    task = models.CharField(
        max_length=200,
        help_text="The clinical question the model answers (from its manifest). One version per task is "
        "active; a case is analysed by the active model of its task.",
    )
    labels = models.JSONField(help_text="Ordered stage labels, least to most advanced.")
    bundle_path = models.CharField(max_length=500, help_text="Model bundle folder (manifest.json + .keras file).")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the model file, checked on register and on load.")
    metrics = models.JSONField(default=dict, blank=True, help_text="Validation metrics measured at training time.")
    training_summary = models.JSONField(
        default=dict, blank=True, help_text="Data splits, library versions and training settings from the manifest."
    )
    temperature = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(1e-6)],
        help_text="Calibration temperature applied to the logits at inference (fitted on validation data).",
    )
    uncertain_below = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A prediction whose top probability is below this is flagged uncertain.",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    registered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="modelversion_unique_name_version"),
            # One active version per task: breast ultrasound and lymph-node models serve side by side.
            models.UniqueConstraint(
                fields=["task"], condition=Q(status="active"), name="modelversion_one_active_per_task"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["draft", "active", "candidate", "retired"]), name="modelversion_status_valid"
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
    task = models.CharField(
        max_length=200,
        blank=True,
        help_text="Which clinical question the case's images are analysed for; the worker uses the active "
        "model of this task. Blank only on cases made before tasks existed.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cases")
    created_at = models.DateTimeField(default=timezone.now)
    unit = models.ForeignKey(
        "accounts.CareUnit",
        null=True,
        on_delete=models.PROTECT,
        related_name="cases",
        help_text="The care unit the case was created in; its members see the case. "
        "Empty only for cases made before care units existed: nobody sees those until granted.",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # "My cases" and the API list, newest first: read in index order, page by page.
            models.Index(fields=["-created_at", "-id"], name="case_newest_first"),
        ]

    def __str__(self) -> str:
        return f"Case {self.patient_ref}"


# Direct foreign keys for guardian's object permissions on cases: lists filter with a
# join on an indexed integer column instead of a text cast of the generic object_pk.
class CaseUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Case, on_delete=models.CASCADE)


class CaseGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Case, on_delete=models.CASCADE)


class Scan(models.Model):
    class Format(models.TextChoices):
        PNG = "PNG", "PNG"
        JPEG = "JPEG", "JPEG"
        TIFF = "TIFF", "TIFF"
        DICOM = "DICOM", "DICOM"
        WSI = "WSI", "Whole-slide image"

    class Kind(models.TextChoices):
        IMAGE = "image", "Image"
        SLIDE = "slide", "Whole-slide image"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="scans")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the stored bytes; also the storage address.")
    storage_name = models.CharField(max_length=200)
    original_name = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=10, choices=Format.choices)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    burned_in_annotation = models.BooleanField(
        default=False,
        help_text="DICOM Burned In Annotation = YES: identifying text may be burnt into the pixels, "
        "which de-identification cannot remove. Shown as a warning to reviewers.",
    )
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.IMAGE)
    mpp_x = models.FloatField(
        null=True, blank=True, help_text="Slides: micrometres per pixel at level 0 (from the file, or as stated)."
    )
    mpp_y = models.FloatField(null=True, blank=True)
    chunk_bytes = models.PositiveIntegerField(
        default=0,
        help_text="Slides: stored as encrypted chunks of this many bytes under storage_name/NNNNNN; 0 for images.",
    )
    received_sha256 = models.CharField(
        max_length=64,
        blank=True,
        help_text="Slides: SHA-256 of the file as uploaded (checked against the uploader's); sha256 is the stored, "
        "anonymised copy's.",
    )
    slide_info = models.JSONField(
        default=dict,
        blank=True,
        help_text="Slides: vendor, levels, resolution source, associated images present and removed.",
    )

    class Meta:
        ordering = ["uploaded_at", "id"]
        constraints = [
            # The same bytes uploaded again by the same person to the same case are
            # recognised as a repeat, not a second scan.
            models.UniqueConstraint(fields=["case", "sha256", "uploaded_by"], name="scan_unique_repeat_upload"),
            models.CheckConstraint(condition=Q(kind__in=["image", "slide"]), name="scan_kind_valid"),
            models.CheckConstraint(
                condition=Q(kind="image") | (Q(chunk_bytes__gt=0) & Q(mpp_x__gt=0) & Q(mpp_y__gt=0)),
                name="scan_slide_has_chunks_and_resolution",
            ),
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
    tiles_done = models.PositiveIntegerField(default=0, help_text="Slides: tissue tiles analysed so far.")
    tiles_total = models.PositiveIntegerField(default=0, help_text="Slides: tissue tiles to analyse (0 until known).")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The jobs list (API), newest first.
            models.Index(fields=["-created_at", "-id"], name="job_newest_first"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed"]), name="job_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.uuid} ({self.status})"


def queue_keys(prefix: str = "") -> tuple[models.Case, models.Case, models.Case]:
    """The review queue's three keys on a prediction's fields (``prefix`` reaches them
    from another model, e.g. "prediction__"). An input outside what its model was
    trained on comes first: the AI gives it nothing, someone must read it from scratch,
    and an upload to the wrong task should be found early. Then uncertain predictions,
    then confident ones, each by stage (most advanced first) and confidence (least
    first). An outside input's withheld stage and confidence take no part in its place:
    a constant stands in for them, so the order cannot tell a reader what the page
    withholds."""
    ood = Q(**{f"{prefix}out_of_distribution": True})
    attention = models.Case(
        models.When(ood, then=models.Value(2)),
        models.When(Q(**{f"{prefix}uncertain": True}), then=models.Value(1)),
        default=models.Value(0),
        output_field=models.IntegerField(),
    )
    stage = models.Case(
        models.When(ood, then=models.Value(0.0)),
        default=models.F(f"{prefix}stage_rank"),
        output_field=models.FloatField(),
    )
    confidence = models.Case(
        models.When(ood, then=models.Value(0.0)),
        default=models.F(f"{prefix}confidence"),
        output_field=models.FloatField(),
    )
    return attention, stage, confidence


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
    uncertain = models.BooleanField(
        default=False,
        help_text="Top probability below the model's uncertain threshold: the model does not know; "
        "the item is reviewed first.",
    )
    out_of_distribution = models.BooleanField(
        default=False,
        help_text="The input is outside what the model was trained on (too small, nearly blank, or far "
        "from its training images): the review shows the warning and no suggested stage.",
    )
    ood_reasons = models.JSONField(
        default=list, blank=True, help_text="Why it is out of distribution: codes of diagnostics/ml/ood.py."
    )
    ood_score = models.FloatField(
        null=True,
        blank=True,
        help_text="Squared Mahalanobis distance of the penultimate features to the nearest training class "
        "mean; null when the bundle carries no reference.",
    )
    heatmap_storage_name = models.CharField(
        max_length=200, blank=True, help_text="Grad-CAM heat map (PNG) in scan storage; blank if none."
    )
    slide_map_storage_name = models.CharField(
        max_length=200,
        blank=True,
        help_text="Slides: the tile probability map (JSON) in scan storage; heatmap_storage_name is its overlay.",
    )
    regions = models.JSONField(
        default=list,
        blank=True,
        help_text="Slides: the top-k suspicious regions, level-0 pixels, most suspicious first.",
    )
    slide_summary = models.JSONField(
        default=dict, blank=True, help_text="Slides: the slide-level method and its parameters, grid, tile counts."
    )
    input_sha256 = models.CharField(max_length=64)
    inference_ms = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        permissions = [("review_prediction", "Can review predictions and sign decisions")]
        indexes = [
            # The review queue's order (selectors.reviews.review_queue, the same three
            # expressions): walked in index order with the page's LIMIT, instead of
            # sorting every pending item.
            models.Index(
                queue_keys()[0].desc(),
                queue_keys()[1].desc(),
                queue_keys()[2],
                name="prediction_queue_keys",
            ),
        ]

    def __str__(self) -> str:
        return f"Prediction {self.predicted_label} ({self.confidence:.2f})"

    @property
    def label_probabilities(self) -> list[tuple[str, float]]:
        return list(zip(self.labels, self.probabilities, strict=True))


class ShadowPrediction(models.Model):
    """What a candidate model version said about a scan, in shadow. Never a result and
    never shown to a physician or clinician: no selector of the clinical pages or the
    API reads this table; only the admins' comparison page does."""

    class Source(models.TextChoices):
        LIVE = "live", "New scan, beside the active version"
        BACKFILL = "backfill", "Signed case, on demand"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="shadow_predictions")
    scan = models.ForeignKey(Scan, on_delete=models.PROTECT, related_name="+")
    source = models.CharField(max_length=10, choices=Source.choices)
    labels = models.JSONField(help_text="The candidate's ordered stage labels.")
    probabilities = models.JSONField(help_text="One probability per label, same order.")
    predicted_label = models.CharField(max_length=100)
    confidence = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    out_of_distribution = models.BooleanField(
        default=False, help_text="The candidate would have withheld its answer: the input is outside what it knows."
    )
    ood_reasons = models.JSONField(default=list, blank=True, help_text="Codes of diagnostics/ml/ood.py.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version", "scan"], name="shadowprediction_one_per_scan"),
            models.CheckConstraint(condition=Q(source__in=["live", "backfill"]), name="shadowprediction_source_valid"),
        ]

    def __str__(self) -> str:
        return f"Shadow prediction {self.uuid}"


class SlideUpload(models.Model):
    """A resumable (tus) upload of a whole-slide image in progress. Its bytes are stored
    as encrypted chunks under ``uploads/<uuid>/``; it becomes a Scan only after the
    whole file arrived, its SHA-256 matched and the slide was read and anonymised. Seen
    by its uploader alone; an interrupted one expires and is deleted with its chunks."""

    class Status(models.TextChoices):
        RECEIVING = "receiving", "Receiving"
        QUEUED = "queued", "Checking queued"
        PROCESSING = "processing", "Checking"
        ACCEPTED = "accepted", "Accepted"
        REFUSED = "refused", "Refused"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="slide_uploads")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    filename = models.CharField(max_length=255)
    length = models.PositiveBigIntegerField(help_text="Declared size in bytes (tus Upload-Length).")
    offset = models.PositiveBigIntegerField(default=0, help_text="Bytes received and stored so far.")
    chunk_sizes = models.JSONField(default=list, blank=True, help_text="Length of each stored chunk, in order.")
    stated_mpp = models.FloatField(
        null=True, blank=True, help_text="Micrometres per pixel stated by the uploader, for slides without one."
    )
    claimed_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 the uploader computed.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RECEIVING, db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True, help_text="Why the slide was refused; never patient data.")
    scan = models.ForeignKey(Scan, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(help_text="An unfinished upload is deleted with its chunks after this.")

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["receiving", "queued", "processing", "accepted", "refused"]),
                name="slideupload_status_valid",
            ),
            models.CheckConstraint(condition=Q(offset__lte=models.F("length")), name="slideupload_offset_le_length"),
        ]

    def __str__(self) -> str:
        return f"Slide upload {self.uuid} ({self.status})"

    @property
    def storage_prefix(self) -> str:
        return f"uploads/{self.uuid}"


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
    content_sha256 = models.CharField(
        max_length=64,
        blank=True,
        help_text="SHA-256 over the signed content (item, prediction, outcome, stage, reason, signer, time, "
        "supersedes), fixed at signing; a later change to any of them no longer matches it.",
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


class ReviewerPreference(models.Model):
    """Per-physician review settings."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_preference")
    blinded_first = models.BooleanField(
        default=False,
        help_text="Record an own stage before the AI's answer is shown, to limit anchoring on the suggestion.",
    )

    def __str__(self) -> str:
        return f"Review preference of {self.user_id}"


class BlindedRead(models.Model):
    """The stage a physician recorded before the AI's answer was revealed. Kept next to
    the signed decision so reads with and without the suggestion can be compared."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    review_item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="blinded_reads")
    physician = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    stage = models.CharField(max_length=100, help_text="The physician's stage before seeing the AI's suggestion.")
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Once revealed, a blinded read cannot be redone: that would no longer be blind.
            models.UniqueConstraint(fields=["review_item", "physician"], name="blindedread_one_per_physician"),
        ]

    def __str__(self) -> str:
        return f"Blinded read {self.stage}"


class Notification(models.Model):
    class Kind(models.TextChoices):
        CASE_SIGNED = "case_signed", "Case signed"
        REVIEW_OVERDUE = "review_overdue", "Review overdue"
        DRIFT_ALARM = "drift_alarm", "Model drift alarm"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.CharField(
        max_length=300, help_text="Shown in the app and e-mailed; a pseudonymous reference at most."
    )
    link = models.CharField(max_length=300, blank=True)
    review_item = models.ForeignKey(
        ReviewItem, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["case_signed", "review_overdue", "drift_alarm"]), name="notification_kind_valid"
            ),
            # The periodic overdue check runs again and again: one reminder per item and physician.
            models.UniqueConstraint(
                fields=["user", "review_item"], condition=Q(kind="review_overdue"), name="notification_one_overdue"
            ),
        ]

    def __str__(self) -> str:
        return f"Notification {self.kind} for {self.user_id}"


class DriftReference(models.Model):
    """What a model version's inputs and outputs looked like at the start: histograms
    of image size and colour, the predicted-stage mix and the confidences. Aggregates
    only, never an image or a case."""

    class Source(models.TextChoices):
        BUNDLE = "bundle", "The bundle's validation images at training time"
        BASELINE = "baseline", "The version's first predictions"

    model_version = models.OneToOneField(ModelVersion, on_delete=models.PROTECT, related_name="drift_reference")
    source = models.CharField(max_length=10, choices=Source.choices)
    n = models.PositiveIntegerField(
        help_text="Predictions (or, from a bundle, validation images) it was computed from."
    )
    last_prediction_id = models.PositiveBigIntegerField(
        default=0, help_text="The newest prediction in the reference; checks look at later ones only (0: any)."
    )
    stats = models.JSONField(help_text="Histograms (proportions) and the confidence sample.")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Drift reference of {self.model_version_id} ({self.source}, n={self.n})"


class DriftCheck(models.Model):
    """One periodic comparison of a model version's recent predictions with its
    reference: each measure with its value, threshold and whether it crossed it."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="drift_checks")
    checked_at = models.DateTimeField(default=timezone.now, db_index=True)
    window = models.PositiveIntegerField(help_text="Predictions in the window checked.")
    measures = models.JSONField(help_text="{name: {value, threshold, alarm, detail}}.")
    alarm = models.BooleanField(default=False)

    class Meta:
        ordering = ["-checked_at", "-id"]

    def __str__(self) -> str:
        return f"Drift check of {self.model_version_id} at {self.checked_at:%Y-%m-%d %H:%M}"


class WorkerHeartbeat(models.Model):
    """The last sign of life of each Celery worker, written by the worker's main
    process; read by /health/. Holds no clinical data."""

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField()
    last_seen = models.DateTimeField(default=timezone.now)
    # Where its network runs, written once its pool process has loaded the models:
    # "cpu", or e.g. "cuda:0 (NVIDIA H200)"; and the Keras backend (tensorflow or jax).
    device = models.CharField(max_length=120, blank=True, default="")
    backend = models.CharField(max_length=20, blank=True, default="")
    precision = models.CharField(max_length=10, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.hostname} ({self.last_seen:%Y-%m-%d %H:%M:%S})"


# --- Hospital integration: PACS in, signed results out --------------------------------


class IntegrationAccount(models.Model):
    """A hospital system (PACS, modality, router) that sends studies to CancerWeb.

    It acts through its own service user, a clinician-role member of exactly one care
    unit, so every rule an upload obeys (care-unit scope, validation, audit) holds for
    it unchanged; its cases are analysed for ``task``."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True, help_text="The sending system, e.g. 'Radiology PACS'.")
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="integration")
    unit = models.ForeignKey("accounts.CareUnit", on_delete=models.PROTECT, related_name="integrations")
    task = models.CharField(max_length=200, help_text="The task the received studies are analysed for.")
    body_site = models.CharField(max_length=100, default="PACS study", help_text="Body site given to new cases.")
    token_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the bearer token.")
    token_prefix = models.CharField(max_length=12)
    ae_titles = models.JSONField(
        default=list, blank=True, help_text="Calling AE titles allowed to push by DICOM C-STORE."
    )
    dicomweb_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="The PACS's DICOMweb root: studies are pulled from it (when pulling is on) and signed "
        "results are stored into it by STOW-RS. Empty: results are kept for the FHIR API only.",
    )
    pull_enabled = models.BooleanField(default=False)
    pull_modalities = models.CharField(max_length=100, blank=True, help_text="Comma-separated, e.g. 'CT,MR'.")
    pull_study_description = models.CharField(
        max_length=200, blank=True, help_text="QIDO-RS StudyDescription filter (wildcards * and ?)."
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class StudyLink(models.Model):
    """The case made for one original study, and what is needed to put a result back
    into that study: the original Study Instance UID, accession number and the
    patient/study attributes a PACS files a new object under, AES-256-GCM encrypted.
    Only the integration service decrypts it; ``study_key`` (a keyed hash of the
    original UID) finds the case without decrypting anything."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(IntegrationAccount, on_delete=models.PROTECT, related_name="studies")
    case = models.OneToOneField(Case, on_delete=models.PROTECT, related_name="study_link")
    study_key = models.CharField(max_length=64, unique=True)
    identifiers = models.BinaryField(help_text="Encrypted JSON: original study UID, accession, patient/study module.")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Study link {self.uuid}"


class InstanceLink(models.Model):
    """The original Series and SOP Instance UIDs (and SOP class) of a received
    instance, encrypted, so the SR can reference the images the physician saw."""

    study = models.ForeignKey(StudyLink, on_delete=models.PROTECT, related_name="instances")
    scan = models.OneToOneField(Scan, on_delete=models.PROTECT, related_name="instance_link")
    identifiers = models.BinaryField(help_text="Encrypted JSON: original SOP class, SOP instance and series UIDs.")

    def __str__(self) -> str:
        return f"Instance link of scan {self.scan_id}"


class Exchange(models.Model):
    """One message between CancerWeb and a hospital system: an instance received or
    refused, or a signed result on its way out. Holds no clinical data, only states,
    reasons and counts; the outbound row is the source of truth for retries."""

    class Direction(models.TextChoices):
        INBOUND = "inbound", "Inbound"
        OUTBOUND = "outbound", "Outbound"

    class Channel(models.TextChoices):
        STOW_RS = "stow-rs", "DICOMweb STOW-RS (received)"
        PULL = "pull", "DICOMweb QIDO/WADO pull"
        C_STORE = "c-store", "DICOM C-STORE"
        SR_STOW = "sr-stow", "DICOM SR + heat map by STOW-RS"

    class State(models.TextChoices):
        RECEIVED = "received", "Received"
        REFUSED = "refused", "Refused"
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        RETRYING = "retrying", "Retrying"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    state = models.CharField(max_length=10, choices=State.choices, db_index=True)
    reason = models.TextField(blank=True, help_text="Why it was refused or why the last attempt failed.")
    account = models.ForeignKey(
        IntegrationAccount, null=True, blank=True, on_delete=models.PROTECT, related_name="exchanges"
    )
    case = models.ForeignKey(Case, null=True, blank=True, on_delete=models.PROTECT, related_name="exchanges")
    decision = models.ForeignKey(
        ReviewDecision, null=True, blank=True, on_delete=models.PROTECT, related_name="exchanges"
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    detail = models.JSONField(default=dict, blank=True, help_text="Counts, status codes, generated UIDs.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["decision"], condition=Q(direction="outbound"), name="exchange_one_outbound_per_decision"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.channel} {self.state}"


def _study_seed() -> int:
    return uuid.uuid4().int % (2**62)


class ReaderStudy(models.Model):
    """A reader study: a fixed set of scans, read by the chosen readers in a blinded
    worklist, to measure how well readers (and the AI) agree. Its reads are not
    clinical sign-offs: they never become a ReviewDecision and are never shown as a
    result of a case."""

    class Arm(models.TextChoices):
        UNAIDED = "unaided", "Unaided (no AI output shown)"
        AI_SHOWN = "ai_shown", "AI shown (prediction and heat map)"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    arm = models.CharField(max_length=10, choices=Arm.choices)
    task = models.CharField(max_length=200, help_text="The clinical question of every scan in the study.")
    labels = models.JSONField(help_text="Ordered stage labels the readers choose from, least to most advanced.")
    readers = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="reader_studies")
    scans = models.ManyToManyField(Scan, related_name="+")
    seed = models.PositiveBigIntegerField(
        default=_study_seed, help_text="Fixes each reader's shuffled order and the bootstrap's resamples."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("define_reader_study", "Can define reader studies and see their agreement statistics")]
        constraints = [
            models.CheckConstraint(condition=Q(arm__in=["unaided", "ai_shown"]), name="readerstudy_arm_valid"),
        ]

    def __str__(self) -> str:
        return f"Reader study {self.name}"


class ReaderStudyRead(models.Model):
    """One reader's stage for one scan of a study. Recorded once: a changed answer
    after more scans were seen would no longer be an independent read."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(ReaderStudy, on_delete=models.PROTECT, related_name="reads")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    scan = models.ForeignKey(Scan, on_delete=models.PROTECT, related_name="+")
    stage = models.CharField(max_length=100)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["recorded_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "reader", "scan"], name="readerstudyread_one_per_reader_scan"),
        ]

    def __str__(self) -> str:
        return f"Study read {self.stage}"


class ReaderStudyReference(models.Model):
    """The adjudicated stage of a scan in a study, set by the study's owner; where a
    study has any, agreement is measured against them instead of the majority."""

    study = models.ForeignKey(ReaderStudy, on_delete=models.PROTECT, related_name="references")
    scan = models.ForeignKey(Scan, on_delete=models.PROTECT, related_name="+")
    stage = models.CharField(max_length=100)
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    set_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "scan"], name="readerstudyreference_one_per_scan"),
        ]

    def __str__(self) -> str:
        return f"Reference {self.stage}"
