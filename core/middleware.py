"""A clear 503 when PostgreSQL or the image store is unreachable, instead of a 500 or
a hung request."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError, connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from core.api.errors import error_body, is_api_request
from core.exceptions import NotFound, ServiceUnavailable

logger = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # First in the chain (after static files): sessions, authentication and the
        # second-factor checks all read the database, and Django turns their errors into
        # 500s before a later middleware could see them. A persistent connection makes
        # this a no-op while the database is up.
        try:
            connection.ensure_connection()
        except (OperationalError, InterfaceError) as exc:
            return self._unavailable(request, exc)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, ServiceUnavailable):
            # The image store: its message names the problem and holds no data.
            logger.error("%s on %s %s: %s", exception.code, request.method, request.path, exception.message)
            return self._unavailable(request, exception, what="The image store")
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        return self._unavailable(request, exception)

    def _unavailable(self, request: HttpRequest, exception: Exception, what: str = "The database") -> HttpResponse:
        # Only the error type: the message may quote SQL parameters.
        logger.error("unavailable (%s) on %s %s", type(exception).__name__, request.method, request.path)
        # An upload that failed here rolled back and removed the files it had stored.
        response: HttpResponse
        if is_api_request(request):
            # The API's own error shape and a stable code, never an HTML page.
            code = exception.code if isinstance(exception, ServiceUnavailable) else "database_unavailable"
            message = f"{what} cannot be reached right now, so nothing was saved. Try again in 30 seconds."
            response = JsonResponse(error_body(code, message), status=503)
        else:
            # Rendered without the request: context processors would query the database again.
            response = HttpResponse(render_to_string("503.html", {"what": what}), status=503)
        response["Retry-After"] = "30"
        return response


class NotFoundMiddleware:
    """A selector's NotFound answers 404 on pages, like Http404 (the API's exception
    handler does the same for its views)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, NotFound):
            raise Http404(str(exception)) from exception
        return None
