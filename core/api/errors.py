"""One JSON error shape for every 4xx the API answers:

    {"error": {"code": "stable_code", "message": "human text",
               "fields": {"files": [{"code": "empty_file", "message": "...", "file": "a.png"}]}}}

``code`` values are stable for clients; ``message`` is for people and may change.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.exceptions import ApplicationError, NotFound, ServiceUnavailable


class ApiError(exceptions.APIException):
    """An API error with its own stable code, human message and per-field details."""

    def __init__(
        self,
        *,
        code: str,
        message: str,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        fields: dict[str, list[dict[str, str]]] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.message = message
        self.fields = fields or {}


def error_body(code: str, message: str, fields: dict[str, list[dict[str, str]]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def _flatten(details: Any, prefix: str = "", out: dict[str, list[dict[str, str]]] | None = None) -> dict[str, Any]:
    """DRF's nested {field: [{"message", "code"}]} (a list of files gives {index: ...})
    flattened to dotted field names."""
    out = {} if out is None else out
    if isinstance(details, dict) and set(details) == {"message", "code"}:
        out.setdefault(prefix or "non_field_errors", []).append(
            {"code": str(details["code"]), "message": str(details["message"])}
        )
    elif isinstance(details, dict):
        for key, value in details.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(details, list):
        for item in details:
            _flatten(item, prefix, out)
    return out


def _validation_message(fields: dict[str, list[dict[str, str]]]) -> str:
    parts = [f"{name}: {errors[0]['message']}" for name, errors in fields.items() if errors]
    return "The request is not valid. " + "; ".join(parts) if parts else "The request is not valid."


def _django_validation_to_drf(exc: DjangoValidationError) -> exceptions.ValidationError:
    if hasattr(exc, "error_dict"):
        detail: Any = {
            field: [exceptions.ErrorDetail(m, code=e.code or "invalid") for e in errs for m in e.messages]
            for field, errs in exc.error_dict.items()
        }
        if "__all__" in detail:
            detail["non_field_errors"] = detail.pop("__all__")
    else:
        detail = {"non_field_errors": [exceptions.ErrorDetail(m, code=exc.code or "invalid") for m in exc.messages]}
    return exceptions.ValidationError(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = _django_validation_to_drf(exc)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, Http404 | NotFound):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, ServiceUnavailable):
        # A dependency (the image store) is down; nothing was saved, try again later.
        exc = ApiError(code=exc.code, message=exc.message, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    elif isinstance(exc, ApplicationError):
        # A service's refusal that the view did not map to a field: its own code, 400.
        exc = ApiError(code=exc.code, message=exc.message)
    elif isinstance(exc, TooManyFilesSent):
        # Django refuses the multipart body before the view sees it; same code as the upload service.
        message = f"at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files per upload"
        exc = ApiError(
            code="too_many_files",
            message=f"Nothing was stored: {message}.",
            fields={"files": [{"code": "too_many_files", "message": message}]},
        )
    elif isinstance(exc, exceptions.ParseError) and "header size" in str(exc.detail):
        # DRF's multipart parser met Django's refusal of an over-long part header.
        code, message = _unreadable_upload(MultiPartParserError(str(exc.detail))) or ("parse_error", str(exc))
        exc = ApiError(code=code, message=message, fields={"files": [{"code": code, "message": message}]})
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a server error: Django's 500 handler answers and logs it
    if isinstance(exc, ApiError):
        response.data = error_body(exc.error_code, exc.message, exc.fields)
        if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            response["Retry-After"] = "30"
    elif isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.get_full_details())
        response.data = error_body("invalid", _validation_message(fields), fields)
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = error_body(code, str(exc.detail))
    return response


# Django-level handlers: requests that never reach a DRF view (an unknown path, a
# malformed UUID in the URL, too many files in a multipart body) still get the
# API's shape under /api/, and the usual pages elsewhere.


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _unreadable_upload(exception: Exception | None) -> tuple[str, str] | None:
    """A multipart body Django refused before any view ran, as a code and a message
    that name the problem (instead of a bare "Bad Request")."""
    if isinstance(exception, RequestDataTooBig):
        return (
            "request_too_large",
            "The request's form fields are larger than the server accepts; send files as file uploads.",
        )
    if isinstance(exception, TooManyFieldsSent):
        return ("too_many_fields", "The request has more form fields than the server accepts.")
    if not isinstance(exception, MultiPartParserError):
        return None
    if "header size" in str(exception):
        # Each part's headers (its file name among them) must fit in 1,024 bytes.
        return (
            "file_name_too_long",
            "A file name is too long to be read (the upload's part headers are limited to 1,024 bytes); "
            "rename the file to at most 255 characters and upload it again.",
        )
    return ("malformed_upload", "The upload could not be read: the multipart body is malformed.")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    unreadable = _unreadable_upload(exception)
    if is_api_request(request):
        if unreadable:
            code, message = unreadable
            return JsonResponse(error_body(code, message, {"files": [{"code": code, "message": message}]}), status=400)
        return JsonResponse(error_body("bad_request", "The request could not be understood."), status=400)
    if unreadable:
        code, message = unreadable
        if request.path.endswith(".json"):
            # The upload page's per-file endpoint: the shape its script shows next to the file.
            return JsonResponse({"errors": [{"file": "this file", "code": code, "message": message}]}, status=400)
        return render(request, "400.html", {"message": message}, status=400)
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]  # Django accepts None here


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(error_body("permission_denied", "You may not do this."), status=403)
    return defaults.permission_denied(request, exception)  # type: ignore[arg-type]  # Django accepts None here


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(error_body("server_error", "Something went wrong on the server."), status=500)
    return defaults.server_error(request)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form posted with a missing or stale CSRF token: the styled page with a way on
    (Django's own is a bare technical page). The API's views check CSRF themselves."""
    if is_api_request(request):
        return JsonResponse(error_body("csrf_failed", "CSRF check failed; reload the page and retry."), status=403)
    return render(request, "403_csrf.html", status=403)
