"""API: resumable slide uploads (the tus 1.0.0 core protocol with its creation,
expiration and termination extensions), their status, and the slide's tile map.

One implementation serves the browser (tus-js-client, session + CSRF header) and
machines (token). tus was chosen over a home-made protocol because clients exist for
every platform; the server side is the smallest careful implementation of the core
protocol over our storage API, because the maintained Django tus packages write
partial uploads to the web server's own disk, and here every stored byte goes through
Django's storage API encrypted (a folder or an object store, several web servers).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from django.utils.http import http_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.http import request_user
from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from core.api.errors import ApiError
from core.api.permissions import has_perm
from core.http import client_address
from diagnostics.api import serializers as s
from diagnostics.intake import storage
from diagnostics.models import SlideUpload
from diagnostics.selectors.cases import case_get
from diagnostics.selectors.slides import slide_prediction_get, slide_upload_get
from diagnostics.services.slides import (
    UploadProblem,
    slide_upload_append,
    slide_upload_cancel,
    slide_upload_create,
    slide_upload_finish,
)

Uploader = has_perm(UPLOAD_PERMISSION, message="Your role cannot upload slides.")
Reviewer = has_perm(REVIEW_PERMISSION, message="The slide map is for physicians.")
TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

TUS_HEADER = OpenApiParameter("Tus-Resumable", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True, enum=["1.0.0"])


HttpResponseT = TypeVar("HttpResponseT", bound=HttpResponse)


def _tus(response: HttpResponseT, upload: SlideUpload | None = None) -> HttpResponseT:
    response["Tus-Resumable"] = TUS_VERSION
    response["Cache-Control"] = "no-store"
    if upload is not None:
        response["Upload-Offset"] = str(upload.offset)
        response["Upload-Length"] = str(upload.length)
        response["Upload-Expires"] = http_date(upload.expires_at.timestamp())
    return response


def _require_tus(request: Request) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise ApiError(code="tus_version", message=f"send the header Tus-Resumable: {TUS_VERSION}", status_code=412)


def _int_header(request: Request, name: str) -> int:
    raw = request.headers.get(name, "")
    if not raw.isdigit():
        raise ApiError(code="invalid", message=f"the header {name} must be a non-negative integer")
    return int(raw)


def _metadata(request: Request) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated "key base64(value)" pairs."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in request.headers.get("Upload-Metadata", "").split(","))):
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(code="invalid", message=f"Upload-Metadata '{key}' is not base64 of UTF-8 text") from exc
    return out


def _problem(exc: UploadProblem) -> ApiError:
    return ApiError(code=exc.code, message=exc.message, status_code=exc.status)


class TusMixin:
    def get_throttles(self) -> list[Any]:
        # The bytes of an upload (PATCH, and HEAD to resume) are bounded by the declared
        # length that creation (throttled) accepted; throttling them would break a fast upload.
        if self.request.method in ("PATCH", "HEAD"):  # type: ignore[attr-defined]  # a mixin for APIViews
            return []
        return super().get_throttles()  # type: ignore[misc]  # a mixin for APIViews

    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = Response(status=204)
        response["Tus-Version"] = TUS_VERSION
        response["Tus-Extension"] = TUS_EXTENSIONS
        response["Tus-Max-Size"] = str(settings.SLIDE_UPLOAD_MAX_BYTES)
        return _tus(response)


class CaseSlideUploads(TusMixin, GenericAPIView):  # type: ignore[misc]  # options: DRF's and Django's bases disagree
    """Start a resumable upload of a whole-slide image to a case (tus creation)."""

    permission_classes = [Uploader]
    serializer_class = s.SlideUploadOut

    @extend_schema(
        operation_id="slide_uploads_create",
        request=None,
        parameters=[
            TUS_HEADER,
            OpenApiParameter("Upload-Length", OpenApiTypes.INT, OpenApiParameter.HEADER, required=True),
            OpenApiParameter(
                "Upload-Metadata",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="tus metadata: 'filename <base64>' (required) and 'mpp <base64>' (micrometres per "
                "pixel, only for a slide that does not record it).",
            ),
        ],
        responses={201: s.SlideUploadOut},
        description="tus 1.0.0 creation: answers 201 with Location, the URL to HEAD and PATCH the bytes to. "
        f"Each PATCH carries at most CANCERWEB_SLIDE_CHUNK_BYTES ({settings.SLIDE_CHUNK_BYTES} by default) bytes.",
    )
    def post(self, request: Request, case_uuid: Any) -> Response:
        _require_tus(request)
        case = case_get(user=request_user(request), case_uuid=case_uuid)
        if "Upload-Defer-Length" in request.headers:
            raise ApiError(code="invalid", message="give Upload-Length: deferred lengths are not supported")
        length = _int_header(request, "Upload-Length")
        meta = _metadata(request)
        mpp = None
        if meta.get("mpp"):
            try:
                mpp = float(meta["mpp"])
            except ValueError as exc:
                raise ApiError(code="invalid_resolution", message="metadata 'mpp' must be a number") from exc
        try:
            upload = slide_upload_create(
                acting_user=request_user(request),
                case=case,
                filename=meta.get("filename", ""),
                length=length,
                stated_mpp=mpp,
                client_address=client_address(request),
            )
        except UploadProblem as exc:
            raise _problem(exc) from exc
        response = Response(s.SlideUploadOut(upload).data, status=status.HTTP_201_CREATED)
        response["Location"] = request.build_absolute_uri(reverse("api_slide_upload", args=[upload.uuid]))
        return _tus(response, upload)


class SlideUploadDetail(TusMixin, GenericAPIView):  # type: ignore[misc]  # options: DRF's and Django's bases disagree
    """An upload: GET its status (JSON); tus HEAD (offset), PATCH (bytes), DELETE (cancel)."""

    permission_classes = [Uploader]
    serializer_class = s.SlideUploadOut

    def _upload(self, request: Request, upload_uuid: Any) -> SlideUpload:
        return slide_upload_get(user=request_user(request), upload_uuid=upload_uuid)

    @extend_schema(operation_id="slide_uploads_retrieve", responses={200: s.SlideUploadOut})
    def get(self, request: Request, upload_uuid: Any) -> Response:
        """Status: receiving (offset of length), queued/processing (being checked), accepted
        (scan and job given) or refused (error_code, error: nothing was stored)."""
        return Response(s.SlideUploadOut(self._upload(request, upload_uuid)).data)

    def head(self, request: Request, upload_uuid: Any) -> HttpResponse:
        _require_tus(request)
        return _tus(HttpResponse(status=200), self._upload(request, upload_uuid))

    @extend_schema(
        operation_id="slide_uploads_patch",
        request={OFFSET_CONTENT_TYPE: OpenApiTypes.BINARY},
        parameters=[TUS_HEADER, OpenApiParameter("Upload-Offset", OpenApiTypes.INT, OpenApiParameter.HEADER, True)],
        responses={204: OpenApiResponse(description="Stored; the new offset is in Upload-Offset.")},
    )
    def patch(self, request: Request, upload_uuid: Any) -> HttpResponse:
        """tus PATCH: the next bytes at Upload-Offset (409 when the offset is not the upload's)."""
        _require_tus(request)
        upload = self._upload(request, upload_uuid)
        if request.content_type.split(";")[0].strip() != OFFSET_CONTENT_TYPE:
            raise ApiError(
                code="unsupported_media_type", message=f"send the bytes as {OFFSET_CONTENT_TYPE}", status_code=415
            )
        offset = _int_header(request, "Upload-Offset")
        declared = _int_header(request, "Content-Length")
        if declared > settings.SLIDE_CHUNK_BYTES:
            raise _problem(
                UploadProblem(
                    "chunk_too_large", f"send at most {settings.SLIDE_CHUNK_BYTES:,} bytes per request", status=413
                )
            )
        body = bytearray()
        raw = request._request  # the body is read here, not parsed: bounded by the check above
        while len(body) < declared:
            piece = raw.read(min(1 << 20, declared - len(body)))
            if not piece:
                break
            body.extend(piece)
        try:
            slide_upload_append(
                acting_user=request_user(request),
                upload=upload,
                offset=offset,
                data=bytes(body),
                declared_length=declared,
            )
        except UploadProblem as exc:
            raise _problem(exc) from exc
        upload.refresh_from_db()
        return _tus(HttpResponse(status=204), upload)

    @extend_schema(operation_id="slide_uploads_cancel", parameters=[TUS_HEADER], responses={204: None})
    def delete(self, request: Request, upload_uuid: Any) -> HttpResponse:
        """tus termination: give up an unfinished upload; its bytes are deleted."""
        _require_tus(request)
        try:
            slide_upload_cancel(
                acting_user=request_user(request),
                upload=self._upload(request, upload_uuid),
                client_address=client_address(request),
            )
        except UploadProblem as exc:
            raise _problem(exc) from exc
        return _tus(HttpResponse(status=204))


class SlideUploadFinish(GenericAPIView):
    permission_classes = [Uploader]
    serializer_class = s.SlideUploadOut

    @extend_schema(
        operation_id="slide_uploads_finish", request=s.SlideUploadFinishIn, responses={202: s.SlideUploadOut}
    )
    def post(self, request: Request, upload_uuid: Any) -> Response:
        """Every byte is sent: give the file's SHA-256. The slide is then checked (SHA-256,
        format, resolution, label removal) in the background; poll the upload for its status."""
        upload = slide_upload_get(user=request_user(request), upload_uuid=upload_uuid)
        data = s.SlideUploadFinishIn(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            upload = slide_upload_finish(
                acting_user=request_user(request),
                upload=upload,
                sha256=data.validated_data["sha256"],
                client_address=client_address(request),
            )
        except UploadProblem as exc:
            raise _problem(exc) from exc
        return Response(s.SlideUploadOut(upload).data, status=status.HTTP_202_ACCEPTED)


class SlideMap(GenericAPIView):
    permission_classes = [Reviewer]
    serializer_class = s.SlideMapOut

    @extend_schema(operation_id="review_items_slide_map", responses={200: s.SlideMapOut})
    def get(self, request: Request, item_uuid: Any) -> Response:
        """The tile probability map of a slide review item (the AI's answer, not a result)."""
        _, prediction = slide_prediction_get(user=request_user(request), item_uuid=item_uuid)
        return Response(json.loads(storage.read_bytes(prediction.slide_map_storage_name)))
