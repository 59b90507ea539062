"""API: cases, scans and inference jobs. Thin views: input serializer -> service ->
output serializer; reads from the selectors, so the API sees what the pages see."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.http import request_user
from accounts.roles import UPLOAD_PERMISSION
from core.api.errors import ApiError
from core.api.filters import CreatedRangeFilterSet
from core.api.permissions import has_perm
from core.http import client_address
from diagnostics.api import serializers as s
from diagnostics.models import Case, InferenceJob, Scan
from diagnostics.selectors.cases import case_get, cases_for_user, job_get, jobs_for_user, scans_for_user
from diagnostics.services.cases import (
    UploadBatchRejected,
    case_create,
    case_open,
    incoming_files,
    scan_open,
    scans_upload,
)
from diagnostics.services.jobs import job_retry

Uploader = has_perm(UPLOAD_PERMISSION, message="Your role cannot work with cases and scans.")


class CaseFilter(CreatedRangeFilterSet):
    patient_ref = django_filters.CharFilter()
    body_site = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Case
        fields: list[str] = []


class CaseListCreate(generics.ListAPIView):
    """Your cases, newest first. POST creates a case (then upload scans to it)."""

    queryset = Case.objects.none()  # tells the schema the model; get_queryset decides what is seen
    serializer_class = s.CaseOut
    permission_classes = [Uploader]
    filterset_class = CaseFilter

    def get_queryset(self) -> QuerySet[Case]:
        return cases_for_user(user=request_user(self.request)).prefetch_related("scans")

    @extend_schema(request=s.CaseCreateIn, responses={201: s.CaseDetailOut}, operation_id="cases_create")
    def post(self, request: Request) -> Response:
        data = s.CaseCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        case = case_create(
            acting_user=request_user(request), client_address=client_address(request), **data.validated_data
        )
        return Response(s.CaseDetailOut(case).data, status=status.HTTP_201_CREATED)


class CaseDetail(generics.RetrieveAPIView):
    """One case with every scan's status and, once signed, the physician's result."""

    serializer_class = s.CaseDetailOut
    permission_classes = [Uploader]

    def get_object(self) -> Case:
        return case_open(
            acting_user=request_user(self.request),
            case_uuid=self.kwargs["case_uuid"],
            client_address=client_address(self.request),
        )


class CaseScans(generics.ListAPIView):
    """The case's scans. POST (multipart, field `files`, one or many) uploads to it."""

    serializer_class = s.ScanOut
    permission_classes = [Uploader]
    parser_classes = [MultiPartParser]
    queryset = Scan.objects.none()  # tells the schema the model; get_queryset decides what is seen

    def get_queryset(self) -> QuerySet[Scan]:
        case = case_get(user=request_user(self.request), case_uuid=self.kwargs["case_uuid"])
        return scans_for_user(user=request_user(self.request)).filter(case=case).order_by("uploaded_at", "id")

    @extend_schema(request={"multipart/form-data": s.ScanUploadIn}, responses={201: s.UploadOut, 200: s.UploadOut})
    def post(self, request: Request, case_uuid: Any) -> Response:
        """201 when at least one new scan was stored; 200 when every file was a repeat."""
        case = case_get(user=request_user(request), case_uuid=case_uuid)
        data = s.ScanUploadIn(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            result = scans_upload(
                acting_user=request_user(request),
                case=case,
                files=incoming_files(data.validated_data["files"]),
                client_address=client_address(request),
            )
        except UploadBatchRejected as exc:
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
        return scan_open(
            acting_user=request_user(self.request),
            scan_uuid=self.kwargs["scan_uuid"],
            client_address=client_address(self.request),
        )


class JobFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=InferenceJob.Status.choices)
    case = django_filters.UUIDFilter(field_name="scan__case__uuid")
    scan = django_filters.UUIDFilter(field_name="scan__uuid")

    class Meta:
        model = InferenceJob
        fields: list[str] = []


class JobList(generics.ListAPIView):
    """Inference jobs of your cases, newest first."""

    queryset = InferenceJob.objects.none()  # tells the schema the model; get_queryset decides what is seen
    serializer_class = s.JobOut
    permission_classes = [Uploader]
    filterset_class = JobFilter

    def get_queryset(self) -> QuerySet[InferenceJob]:
        return jobs_for_user(user=request_user(self.request))


class JobDetail(generics.RetrieveAPIView):
    serializer_class = s.JobOut
    permission_classes = [Uploader]

    def get_object(self) -> InferenceJob:
        return job_get(user=request_user(self.request), job_uuid=self.kwargs["job_uuid"])


class JobRetry(generics.GenericAPIView):
    serializer_class = s.JobOut
    permission_classes = [Uploader]

    @extend_schema(request=None, responses={200: s.JobOut})
    def post(self, request: Request, job_uuid: Any) -> Response:
        """Put a failed job back in the queue (400 `invalid` with field `status` otherwise)."""
        job = job_get(user=request_user(request), job_uuid=job_uuid)
        job = job_retry(acting_user=request_user(request), job=job, client_address=client_address(request))
        return Response(s.JobOut(job).data)
