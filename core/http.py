"""Request helpers every door (pages, API, signals) shares."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotModified


def client_address(request: HttpRequest | None) -> str | None:
    """The address recorded in audit events. Behind a reverse proxy this is the proxy's
    address unless the proxy's forwarding header is trusted (see the README)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def worklist_queries(request: HttpRequest) -> dict[str, str]:
    """The current filters as query strings: for the pager's links and the live poll."""
    query = request.GET.copy()
    query.pop("fragment", None)
    query.pop("page", None)
    filters = query.urlencode()
    poll = request.GET.copy()
    poll["fragment"] = "1"
    return {"filter_query": filters, "poll_query": poll.urlencode()}


def not_modified(request: HttpRequest, etag: str) -> HttpResponse | None:
    """304 when the poll already holds this version (its If-None-Match), else None."""
    if etag in [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponseNotModified()
        response["ETag"] = etag
        return response
    return None
