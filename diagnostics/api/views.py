"""REST API for integrations. Thin views: input serializer -> service -> output
serializer. Every read takes its queryset or object from diagnostics.selectors, so
the API sees exactly what the pages see (another user's object answers 404)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import django_filters
from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.views import client_address
from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from cancerweb.api.errors import ApiError
from cancerweb.api.permissions import has_perm
from diagnostics import selectors, services
from diagnostics.api import serializers as s
from diagnostics.ml.bundle import BundleError
from diagnostics.models import Case, InferenceJob, ModelVersion, ReviewItem, Scan

Uploader = has_perm(UPLOAD_PERMISSION, message="Your role cannot work with cases and scans.")
Reviewer = has_perm(REVIEW_PERMISSION, message="The review queue is for physicians.")
ModelRegistrar = has_perm("diagnostics.add_modelversion", message="Only admins can register models.")
ModelManager = has_perm("diagnostics.change_modelversion", message="Only admins can activate or retire models.")


def _incoming(files: list[Any]) -> list[services.IncomingFile]:
    # Read at most one byte past the cap: enough for the validator to say "too large"
    # without holding an arbitrarily large upload in memory.
    limit = settings.UPLOAD_MAX_BYTES + 1
    return [services.IncomingFile(name=f.name or "", data=f.read(limit)) for f in files]


# --- cases and scans -------------------------------------------------------------


class CaseFilter(django_filters.FilterSet):
    patient_ref = django_filters.CharFilter()
    body_site = django_filters.CharFilter(lookup_expr="icontains")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Case
        fields: list[str] = []


class CaseListCreate(generics.ListAPIView):
    """Your cases, newest first. POST creates a case (then upload scans to it)."""

    serializer_class = s.CaseOut
    permission_classes = [Uploader]
    filterset_class = CaseFilter

    def get_queryset(self) -> QuerySet[Case]:
        return selectors.cases_for_user(user=self.request.user).prefetch_related("scans")

    @extend_schema(request=s.CaseCreateIn, responses={201: s.CaseDetailOut}, operation_id="cases_create")
    def post(self, request: Request) -> Response:
        data = s.CaseCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        case = services.case_create(
            acting_user=request.user, client_address=client_address(request), **data.validated_data
        )
        return Response(s.CaseDetailOut(case).data, status=status.HTTP_201_CREATED)


class CaseDetail(generics.RetrieveAPIView):
    """One case with every scan's status and, once signed, the physician's result."""

    serializer_class = s.CaseDetailOut
    permission_classes = [Uploader]

    def get_object(self) -> Case:
        return selectors.case_get(user=self.request.user, case_uuid=self.kwargs["case_uuid"])


class CaseScans(generics.ListAPIView):
    """The case's scans. POST (multipart, field `files`, one or many) uploads to it."""

    serializer_class = s.ScanOut
    permission_classes = [Uploader]
    parser_classes = [MultiPartParser]
    queryset = Scan.objects.none()  # tells the schema the model; get_queryset decides what is seen

    def get_queryset(self) -> QuerySet[Scan]:
        case = selectors.case_get(user=self.request.user, case_uuid=self.kwargs["case_uuid"])
        return selectors.scans_for_user(user=self.request.user).filter(case=case).order_by("uploaded_at", "id")

    @extend_schema(request={"multipart/form-data": s.ScanUploadIn}, responses={201: s.UploadOut, 200: s.UploadOut})
    def post(self, request: Request, case_uuid: Any) -> Response:
        """201 when at least one new scan was stored; 200 when every file was a repeat."""
        case = selectors.case_get(user=request.user, case_uuid=case_uuid)
        data = s.ScanUploadIn(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            result = services.scans_upload(
                acting_user=request.user,
                case=case,
                files=_incoming(data.validated_data["files"]),
                client_address=client_address(request),
            )
        except services.UploadBatchRejected as exc:
            raise ApiError(
                code="upload_rejected",
                message=f"Nothing was stored: {exc}",
                fields={
                    "files": [{"code": err.code, "message": err.message, "file": name} for name, err in exc.errors]
                },
            ) from exc
        body = s.UploadOut({"created": result.created, "repeated": result.repeated}).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class ScanDetail(generics.RetrieveAPIView):
    serializer_class = s.ScanOut
    permission_classes = [Uploader]

    def get_object(self) -> Scan:
        return selectors.scan_get(user=self.request.user, scan_uuid=self.kwargs["scan_uuid"])


# --- inference jobs --------------------------------------------------------------


class JobFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=InferenceJob.Status.choices)
    case = django_filters.UUIDFilter(field_name="scan__case__uuid")
    scan = django_filters.UUIDFilter(field_name="scan__uuid")

    class Meta:
        model = InferenceJob
        fields: list[str] = []


class JobList(generics.ListAPIView):
    """Inference jobs of your cases, newest first."""

    serializer_class = s.JobOut
    permission_classes = [Uploader]
    filterset_class = JobFilter

    def get_queryset(self) -> QuerySet[InferenceJob]:
        return selectors.jobs_for_user(user=self.request.user)


class JobDetail(generics.RetrieveAPIView):
    serializer_class = s.JobOut
    permission_classes = [Uploader]

    def get_object(self) -> InferenceJob:
        return selectors.job_get(user=self.request.user, job_uuid=self.kwargs["job_uuid"])


class JobRetry(generics.GenericAPIView):
    serializer_class = s.JobOut
    permission_classes = [Uploader]

    @extend_schema(request=None, responses={200: s.JobOut})
    def post(self, request: Request, job_uuid: Any) -> Response:
        """Put a failed job back in the queue (400 `invalid` with field `status` otherwise)."""
        job = selectors.job_get(user=request.user, job_uuid=job_uuid)
        job = services.job_retry(acting_user=request.user, job=job, client_address=client_address(request))
        return Response(s.JobOut(job).data)


# --- review ----------------------------------------------------------------------


class ReviewFilter(django_filters.FilterSet):
    model = django_filters.UUIDFilter(field_name="prediction__model_version__uuid")
    predicted_label = django_filters.CharFilter(field_name="prediction__predicted_label")

    class Meta:
        model = ReviewItem
        fields: list[str] = []


class ReviewQueue(generics.ListAPIView):
    """Pending items: most advanced predicted stage first, then least confident, then oldest."""

    serializer_class = s.ReviewItemOut
    permission_classes = [Reviewer]
    filterset_class = ReviewFilter
    queryset = ReviewItem.objects.none()  # tells the schema the model; get_queryset decides what is seen

    def get_queryset(self) -> QuerySet[ReviewItem]:
        return selectors.review_queue(user=self.request.user)


class ReviewItemDetail(generics.RetrieveAPIView):
    serializer_class = s.ReviewItemDetailOut
    permission_classes = [Reviewer]

    def get_object(self) -> ReviewItem:
        return selectors.review_item_get(user=self.request.user, item_uuid=self.kwargs["item_uuid"])


class ReviewDecisionCreate(generics.GenericAPIView):
    serializer_class = s.DecisionOut
    permission_classes = [Reviewer]

    @extend_schema(request=s.DecisionIn, responses={201: s.DecisionOut})
    def post(self, request: Request, item_uuid: Any) -> Response:
        """Sign a decision with your password: confirm, reject (stage and reason), or
        correct the current signed decision (`supersedes`, stage and reason)."""
        item = selectors.review_item_get(user=request.user, item_uuid=item_uuid)
        data = s.DecisionIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        supersedes = None
        if values["supersedes"] is not None:
            supersedes = item.decisions.filter(uuid=values["supersedes"]).first()
            if supersedes is None:
                raise ApiError(
                    code="invalid",
                    message="The request is not valid. supersedes: no such decision on this item",
                    fields={"supersedes": [{"code": "not_found", "message": "no such decision on this item"}]},
                )
        try:
            decision = services.review_sign(
                acting_user=request.user,
                review_item=item,
                outcome=values.get("outcome") or "rejected",
                stage=values["stage"],
                reason=values["reason"],
                password=values["password"],
                supersedes=supersedes,
                client_address=client_address(request),
            )
        except services.SignatureError as exc:
            raise ApiError(
                code=exc.code, message=exc.message, fields={"password": [{"code": exc.code, "message": exc.message}]}
            ) from exc
        return Response(s.DecisionOut(decision).data, status=status.HTTP_201_CREATED)


# --- model registry --------------------------------------------------------------


class ModelFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=ModelVersion.Status.choices)
    name = django_filters.CharFilter()

    class Meta:
        model = ModelVersion
        fields: list[str] = []


class ModelListRegister(generics.ListAPIView):
    """Registered model versions (every signed-in user). POST registers a bundle (admins)."""

    serializer_class = s.ModelOut
    filterset_class = ModelFilter

    def get_queryset(self) -> QuerySet[ModelVersion]:
        return selectors.models_for_user(user=self.request.user)

    def get_permissions(self) -> list[Any]:
        if self.request.method == "POST":
            return [ModelRegistrar()]
        return super().get_permissions()

    @extend_schema(request=s.ModelRegisterIn, responses={201: s.ModelOut}, operation_id="models_register")
    def post(self, request: Request) -> Response:
        data = s.ModelRegisterIn(data=request.data)
        data.is_valid(raise_exception=True)
        root = Path(settings.MODEL_DIR).resolve()
        bundle = (root / data.validated_data["bundle"]).resolve()
        try:
            # Only folders inside the model folder: the API must not read arbitrary server paths.
            usable = bundle.is_relative_to(root) and bundle != root and bundle.is_dir()
        except OSError:  # e.g. a name longer than the file system allows
            usable = False
        if not usable:
            raise ApiError(
                code="invalid",
                message="The request is not valid. bundle: no such bundle folder in the model folder",
                fields={"bundle": [{"code": "invalid_bundle", "message": "no such bundle folder in the model folder"}]},
            )
        try:
            model_version = services.model_register(
                acting_user=request.user, bundle_dir=bundle, activate=data.validated_data["activate"]
            )
        except BundleError as exc:
            raise ApiError(
                code="invalid",
                message=f"The request is not valid. bundle: {exc}",
                fields={"bundle": [{"code": "invalid_bundle", "message": str(exc)}]},
            ) from exc
        return Response(s.ModelOut(model_version).data, status=status.HTTP_201_CREATED)


class ModelDetail(generics.RetrieveAPIView):
    serializer_class = s.ModelOut

    def get_object(self) -> ModelVersion:
        return selectors.model_get(user=self.request.user, model_uuid=self.kwargs["model_uuid"])


class ModelActivate(generics.GenericAPIView):
    serializer_class = s.ModelOut
    permission_classes = [ModelManager]

    @extend_schema(request=None, responses={200: s.ModelOut})
    def post(self, request: Request, model_uuid: Any) -> Response:
        """Make this the active version; the previously active one is retired."""
        model_version = selectors.model_get(user=request.user, model_uuid=model_uuid)
        return Response(s.ModelOut(services.model_activate(acting_user=request.user, model_version=model_version)).data)


class ModelRetire(generics.GenericAPIView):
    serializer_class = s.ModelOut
    permission_classes = [ModelManager]

    @extend_schema(request=None, responses={200: s.ModelOut})
    def post(self, request: Request, model_uuid: Any) -> Response:
        """Retire this version. Retiring the active one leaves no active model."""
        model_version = selectors.model_get(user=request.user, model_uuid=model_uuid)
        return Response(s.ModelOut(services.model_retire(acting_user=request.user, model_version=model_version)).data)
