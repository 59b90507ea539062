"""API shapes. Input serializers validate the request; output serializers render
what the selectors returned. No business logic here: services decide."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from diagnostics.models import (
    PATIENT_REF_VALIDATOR,
    Case,
    InferenceJob,
    ModelVersion,
    ReviewDecision,
    ReviewItem,
    Scan,
    SlideUpload,
)
from diagnostics.selectors.cases import ScanStatus, current_decision, scan_status
from diagnostics.selectors.reviews import ood_reason_texts

SCAN_STATUS_CODES = ["queued", "running", "awaiting_review", "signed", "failed"]


class CaseCreateIn(serializers.Serializer):
    patient_ref = serializers.CharField(
        max_length=64,
        validators=[PATIENT_REF_VALIDATOR],
        help_text="Pseudonymous patient reference: letters, digits, dot, dash, underscore. Never a name.",
    )
    body_site = serializers.CharField(max_length=100)
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    task = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="The clinical question (a task with an active model, see /models/); "
        "may be left out while only one task has an active model.",
    )


class ScanUploadIn(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False),
        allow_empty=False,
        help_text="One or more images (PNG, JPEG, TIFF). All are validated first; if one is refused, none is stored.",
    )


class SignedResultOut(serializers.Serializer):
    decision = serializers.UUIDField(source="uuid")
    outcome = serializers.ChoiceField(choices=ReviewDecision.Outcome.choices)
    meaning = serializers.ChoiceField(choices=["confirmed", "rejected", "corrected"])
    stage = serializers.CharField(help_text="The physician's stage: the result.")
    signer_name = serializers.CharField()
    signed_at = serializers.DateTimeField()
    fhir_diagnostic_report = serializers.SerializerMethodField(
        help_text="The FHIR R4 DiagnosticReport of this signed result (for the health record)."
    )

    def get_fhir_diagnostic_report(self, obj: ReviewDecision) -> str:
        return reverse("api_fhir_diagnostic_report", kwargs={"report_id": obj.uuid})


class ScanOut(serializers.ModelSerializer):
    """A scan as its clinician sees it: progress, then the signed result. The model's
    own answer is not shown here: until a physician signs, it is not a result."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    case = serializers.UUIDField(source="case.uuid", read_only=True)
    job = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = Scan
        fields = [
            "id",
            "case",
            "original_name",
            "format",
            "width",
            "height",
            "size_bytes",
            "sha256",
            "uploaded_at",
            "job",
            "status",
            "error",
            "result",
            "kind",
            "mpp_x",
            "mpp_y",
        ]

    def _status(self, obj: Scan) -> ScanStatus:
        cache = self.context.setdefault("_scan_status", {})
        if obj.pk not in cache:
            cache[obj.pk] = scan_status(obj)
        return cache[obj.pk]

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_job(self, obj: Scan) -> str | None:
        job = getattr(obj, "job", None)
        return str(job.uuid) if job is not None else None

    @extend_schema_field(serializers.ChoiceField(choices=SCAN_STATUS_CODES))
    def get_status(self, obj: Scan) -> str:
        return self._status(obj).code

    @extend_schema_field(serializers.CharField())
    def get_error(self, obj: Scan) -> str:
        return self._status(obj).error

    @extend_schema_field(SignedResultOut(allow_null=True))
    def get_result(self, obj: Scan) -> dict[str, Any] | None:
        decision = self._status(obj).decision
        return SignedResultOut(decision).data if decision is not None else None


class CaseOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    scan_count = serializers.SerializerMethodField()

    class Meta:
        model = Case
        fields = ["id", "patient_ref", "body_site", "task", "note", "created_at", "scan_count"]

    def get_scan_count(self, obj: Case) -> int:
        return len(obj.scans.all())


class CaseDetailOut(CaseOut):
    scans = ScanOut(many=True, read_only=True)

    class Meta(CaseOut.Meta):
        fields = [*CaseOut.Meta.fields, "scans"]


class UploadOut(serializers.Serializer):
    created = ScanOut(many=True, help_text="New scans; each has a queued inference job.")
    repeated = ScanOut(many=True, help_text="Files already uploaded by you to this case: not added again.")


class JobOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    scan = serializers.UUIDField(source="scan.uuid", read_only=True)
    case = serializers.UUIDField(source="scan.case.uuid", read_only=True)

    class Meta:
        model = InferenceJob
        fields = [
            "id",
            "scan",
            "case",
            "status",
            "attempts",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "tiles_done",
            "tiles_total",
        ]


class PredictionOut(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    model = serializers.UUIDField(source="model_version.uuid")
    model_name = serializers.CharField(source="model_version.name")
    model_version = serializers.CharField(source="model_version.version")
    labels = serializers.ListField(child=serializers.CharField())
    probabilities = serializers.ListField(child=serializers.FloatField())
    predicted_label = serializers.CharField()
    confidence = serializers.FloatField()
    created_at = serializers.DateTimeField()


class DecisionOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    review_item = serializers.UUIDField(source="review_item.uuid", read_only=True)
    physician = serializers.UUIDField(source="physician.uuid", read_only=True)
    supersedes = serializers.SerializerMethodField()
    meaning = serializers.ChoiceField(choices=["confirmed", "rejected", "corrected"], read_only=True)

    class Meta:
        model = ReviewDecision
        fields = [
            "id",
            "review_item",
            "outcome",
            "meaning",
            "stage",
            "reason",
            "physician",
            "signer_name",
            "signed_at",
            "supersedes",
        ]

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_supersedes(self, obj: ReviewDecision) -> str | None:
        return str(obj.supersedes.uuid) if obj.supersedes is not None else None


class ReviewItemOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    scan = serializers.UUIDField(source="prediction.scan.uuid", read_only=True)
    case = serializers.UUIDField(source="prediction.scan.case.uuid", read_only=True)
    patient_ref = serializers.CharField(source="prediction.scan.case.patient_ref", read_only=True)
    body_site = serializers.CharField(source="prediction.scan.case.body_site", read_only=True)
    ai_hidden = serializers.BooleanField(
        read_only=True,
        help_text="Blinded-first reading: the AI's answer stays hidden (prediction is null) until you record your "
        "own stage (POST blinded-read/).",
    )
    out_of_distribution = serializers.BooleanField(
        source="prediction.out_of_distribution",
        read_only=True,
        help_text="The input is outside what the model was trained on: the AI gives no suggestion "
        "(prediction is null); ood_reasons says why.",
    )
    ood_reasons = serializers.SerializerMethodField()
    prediction = serializers.SerializerMethodField()

    class Meta:
        model = ReviewItem
        fields = [
            "id",
            "status",
            "created_at",
            "scan",
            "case",
            "patient_ref",
            "body_site",
            "ai_hidden",
            "out_of_distribution",
            "ood_reasons",
            "prediction",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_ood_reasons(self, obj: ReviewItem) -> list[str]:
        """Each reason in words (codes: too_small, nearly_blank, unlike_training_data; slides:
        slide_no_tissue, slide_tiles_unlike_training_data)."""
        return ood_reason_texts(obj.prediction)

    @extend_schema_field(PredictionOut(allow_null=True))
    def get_prediction(self, obj: ReviewItem) -> dict[str, Any] | None:
        if obj.ai_hidden or obj.ai_withheld:  # type: ignore[attr-defined]  # annotated by the review selectors
            return None
        return dict(PredictionOut(obj.prediction).data)


class SlideRegionOut(serializers.Serializer):
    rank = serializers.IntegerField()
    x = serializers.IntegerField(help_text="Level-0 pixels from the slide's left edge.")
    y = serializers.IntegerField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    tiles = serializers.IntegerField()
    mass = serializers.FloatField(help_text="Sum of the smoothed tumour probability over the region's tiles.")
    max_probability = serializers.FloatField()
    kind = serializers.ChoiceField(choices=["component", "tile"])


class SlideResultOut(serializers.Serializer):
    """The AI's slide-level answer (not a result until a physician signs)."""

    width = serializers.IntegerField(source="scan.width")
    height = serializers.IntegerField(source="scan.height")
    mpp = serializers.FloatField(source="scan.mpp_x", help_text="Micrometres per level-0 pixel.")
    regions = SlideRegionOut(many=True, help_text="The top-k suspicious regions, most suspicious first.")
    method = serializers.DictField(source="slide_summary.method", help_text="The slide-level method and parameters.")
    tissue_tiles = serializers.IntegerField(source="slide_summary.tissue_tiles")
    tumour_tiles = serializers.IntegerField(source="slide_summary.tumour_tiles")
    tile_px = serializers.FloatField(source="slide_summary.tile_px", help_text="Level-0 pixels per tile side.")
    outside_tiles = serializers.IntegerField(
        source="slide_summary.outside_tiles",
        default=None,
        allow_null=True,
        help_text="Tissue tiles unlike the model's training patches (null: the model carries no reference). "
        "From half of the tissue tiles on, the slide is out of distribution and this answer is withheld.",
    )


class ReviewItemDetailOut(ReviewItemOut):
    decisions = serializers.SerializerMethodField()
    current_decision = serializers.SerializerMethodField()
    slide = serializers.SerializerMethodField()

    class Meta(ReviewItemOut.Meta):
        fields = [*ReviewItemOut.Meta.fields, "decisions", "current_decision", "slide"]

    @extend_schema_field(SlideResultOut(allow_null=True))
    def get_slide(self, obj: ReviewItem) -> dict[str, Any] | None:
        prediction = obj.prediction
        if prediction.scan.kind != Scan.Kind.SLIDE:
            return None
        if obj.ai_hidden or obj.ai_withheld:  # type: ignore[attr-defined]  # annotated by the review selectors
            return None  # the map's regions are the AI's answer: hidden or withheld like the rest of it
        return dict(SlideResultOut(prediction).data)

    @extend_schema_field(DecisionOut(many=True))
    def get_decisions(self, obj: ReviewItem) -> list[dict[str, Any]]:
        decisions = obj.decisions.select_related("supersedes", "physician", "review_item").order_by("signed_at", "id")
        return list(DecisionOut(decisions, many=True).data)

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_current_decision(self, obj: ReviewItem) -> str | None:
        current = current_decision(obj)
        return str(current.uuid) if current is not None else None


class BlindedReadIn(serializers.Serializer):
    stage = serializers.CharField(max_length=100, help_text="Your own stage, before the AI's answer is shown.")


class DecisionIn(serializers.Serializer):
    outcome = serializers.ChoiceField(
        choices=ReviewDecision.Outcome.choices,
        required=False,
        help_text="confirmed or rejected. A correction (supersedes given) is always a rejection with a stage.",
    )
    stage = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    password = serializers.CharField(
        write_only=True, trim_whitespace=False, help_text="Your password: re-entering it signs the decision."
    )
    otp_token = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        default="",
        max_length=8,
        help_text="The code from your authenticator app, if you enrolled one (needed with a token on every "
        "signature, and on the first signature of a browser session).",
    )
    supersedes = serializers.UUIDField(
        required=False, allow_null=True, default=None, help_text="To correct a signed decision: its id."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("supersedes") is None and not attrs.get("outcome"):
            raise serializers.ValidationError({"outcome": "choose confirmed or rejected"}, code="required")
        return attrs


class ModelOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    labels = serializers.ListField(child=serializers.CharField(), read_only=True)
    metrics = serializers.DictField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version", "task", "labels", "status", "sha256", "metrics", "registered_at"]


class ModelRegisterIn(serializers.Serializer):
    bundle = serializers.CharField(
        max_length=500, help_text="Bundle folder inside the server's model folder, e.g. demo-pcam."
    )
    activate = serializers.BooleanField(default=False, required=False)


class SlideUploadOut(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    case = serializers.UUIDField(source="case.uuid")
    filename = serializers.CharField()
    length = serializers.IntegerField(help_text="Declared size in bytes.")
    offset = serializers.IntegerField(help_text="Bytes received so far (tus Upload-Offset).")
    status = serializers.ChoiceField(choices=SlideUpload.Status.choices)
    error_code = serializers.CharField(help_text="Why the slide was refused (stable code), when it was.")
    error = serializers.CharField()
    scan = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()
    expires_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_scan(self, obj: SlideUpload) -> str | None:
        return str(obj.scan.uuid) if obj.scan is not None else None

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_job(self, obj: SlideUpload) -> str | None:
        job = getattr(obj.scan, "job", None) if obj.scan_id else None
        return str(job.uuid) if job is not None else None


class SlideUploadFinishIn(serializers.Serializer):
    sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$", help_text="SHA-256 of the whole file as computed by the uploader (64 hex digits)."
    )


class SlideMapOut(serializers.Serializer):
    cols = serializers.IntegerField()
    rows = serializers.IntegerField()
    tile_px = serializers.FloatField(help_text="Level-0 pixels per tile side.")
    labels = serializers.ListField(child=serializers.CharField())
    columns = serializers.ListField(child=serializers.CharField(), help_text="Meaning of each value of a tile row.")
    tiles = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()),
        help_text="One row per tissue tile: column, row, then the probability of each label.",
    )
