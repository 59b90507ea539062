"""API doors of the hospital integration: DICOMweb STOW-RS for integration accounts
and the FHIR R4 DiagnosticReport of a signed result. Thin: the service decides."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.authentication import ApiTokenAuthentication
from accounts.http import request_user
from accounts.models import User
from core.api.errors import ApiError
from core.http import client_address
from diagnostics.interop import dicomweb
from diagnostics.models import Exchange, IntegrationAccount
from diagnostics.services.integration import (
    TOKEN_PREFIX,
    exchange_refused,
    fhir_report_open,
    instance_receive,
    integration_authenticate,
)


class IntegrationTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer cwi_...``: an integration account's token. Other
    tokens are left to the next authentication class."""

    def authenticate(self, request: Any) -> tuple[User, IntegrationAccount] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].decode(errors="replace").lower() not in ("bearer", "token"):
            return None
        key = parts[1].decode("ascii", errors="replace")
        if not key.startswith(TOKEN_PREFIX):
            return None
        account = integration_authenticate(token=key)
        if account is None:
            raise exceptions.AuthenticationFailed(detail="The integration token is not valid.", code="invalid_token")
        return account.user, account

    def authenticate_header(self, request: Any) -> str:
        # Both keywords are accepted, as for user tokens (one challenge for the whole API).
        return 'Token realm="api"'


class IntegrationTokenScheme(OpenApiAuthenticationExtension):
    target_class = "diagnostics.api.integration.IntegrationTokenAuthentication"
    name = "integrationToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An integration account's token (cwi_...)."}


class IsIntegrationAccount(BasePermission):
    message = "Only an integration account's token may store studies."

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.auth, IntegrationAccount)


class DicomJsonRenderer(JSONRenderer):
    media_type = "application/dicom+json"


class StowStudies(APIView):
    """DICOMweb STOW-RS (PS3.18 10.5): store the instances of one or more studies.

    Body: ``multipart/related; type="application/dicom"``, one PS3.10 instance per
    part. Each instance is validated and de-identified like an upload and filed as a
    scan of the case of its study (one case per study). The answer is the Store
    Instances Response: 200 all stored, 202 some failed, 409 none stored, with a
    FailedSOPSequence giving each refused instance's DICOM failure reason."""

    # Users authenticate too, so that a person's token is told it is the wrong kind (403).
    authentication_classes = [IntegrationTokenAuthentication, ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [IsIntegrationAccount]
    # A STOW-RS client asks for application/dicom+json; errors and clients that do not
    # say are answered in application/json, like the whole API.
    renderer_classes = [JSONRenderer, DicomJsonRenderer]
    parser_classes: list[Any] = []

    @extend_schema(
        operation_id="dicomweb_studies_store",
        request={"multipart/related": OpenApiTypes.BINARY},
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="All instances stored (DICOM JSON)."),
            202: OpenApiResponse(OpenApiTypes.OBJECT, description="Some instances failed (FailedSOPSequence)."),
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="No instance stored (FailedSOPSequence)."),
        },
    )
    def post(self, request: Request) -> Response:
        from django.conf import settings

        account = request.auth
        assert isinstance(account, IntegrationAccount)

        def refuse(code: str, message: str, status_code: int) -> ApiError:
            exchange_refused(account=account, channel=Exchange.Channel.STOW_RS, code=code, message=message)
            return ApiError(code=code, message=message, status_code=status_code)

        try:
            boundary = dicomweb.stow_boundary(request.META.get("CONTENT_TYPE", ""))
        except dicomweb.MultipartError as err:
            raise refuse(err.code, err.message, 415 if err.code == "unsupported_media_type" else 400) from err
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0:
            raise refuse("length_required", "send the request with a Content-Length", 411)
        limit = settings.INTEGRATION_STOW_MAX_BYTES
        if length > limit:
            # Refused from the header: a 2 GB body is never read.
            raise refuse(
                "too_large", f"the request declares {length:,} bytes; the limit is {limit:,} bytes per request", 413
            )
        body = request._request.read(length)
        try:
            parts = dicomweb.split_parts(body, boundary)
        except dicomweb.MultipartError as err:
            raise refuse(err.code, err.message, 400) from err
        stored: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        for content_type, data in parts:
            media, _ = dicomweb.content_type_params(content_type or "application/dicom")
            if media != "application/dicom":
                exchange_refused(
                    account=account,
                    channel=Exchange.Channel.STOW_RS,
                    code="unsupported_media_type",
                    message=f"a part of type {media[:60]} is not application/dicom",
                    failure_reason=dicomweb.CANNOT_UNDERSTAND,
                )
                failed.append(("", "", dicomweb.CANNOT_UNDERSTAND))
                continue
            outcome = instance_receive(
                account=account, data=data, channel=Exchange.Channel.STOW_RS, client_address=client_address(request)
            )
            if outcome.stored:
                stored.append((outcome.sop_class_uid, outcome.sop_instance_uid))
            else:
                assert outcome.failure_reason is not None
                failed.append((outcome.sop_class_uid, outcome.sop_instance_uid, outcome.failure_reason))
        return Response(
            dicomweb.stow_response(stored=stored, failed=failed),
            status=dicomweb.stow_status(stored=len(stored), failed=len(failed)),
        )


class FhirJsonRenderer(JSONRenderer):
    media_type = "application/fhir+json"


class FhirDiagnosticReport(APIView):
    """The FHIR R4 DiagnosticReport (with its stage Observation) of a signed decision,
    for the electronic health record. Visible to whoever may see the case; a decision
    that does not exist or is out of reach answers 404."""

    authentication_classes = [IntegrationTokenAuthentication, ApiTokenAuthentication, SessionAuthentication]
    # application/json by default (and for errors, like the whole API); a FHIR client's
    # Accept: application/fhir+json gets that media type.
    renderer_classes = [JSONRenderer, FhirJsonRenderer]

    @extend_schema(
        operation_id="fhir_diagnostic_report_retrieve",
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="A FHIR R4 DiagnosticReport resource.")},
    )
    def get(self, request: Request, report_id: Any) -> Response:
        report = fhir_report_open(
            acting_user=request_user(request), decision_uuid=report_id, client_address=client_address(request)
        )
        return Response(report)
