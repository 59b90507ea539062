"""Request helpers every door (pages, API, signals) shares."""

from __future__ import annotations

from django.http import HttpRequest


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
