from __future__ import annotations

from typing import Any

from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from core.pagination import BoundedPaginator


class Pagination(PageNumberPagination):
    """Page numbers with a bounded count (core/pagination.py): ``count`` is exact
    while ``count_exact`` is true, else a lower bound; ``next`` is always right."""

    page_size = 25
    page_size_query_param = "page_size"
    max_page_size = 100

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        hint = request.query_params.get(self.page_query_param, 1)
        self.django_paginator_class = lambda qs, size: BoundedPaginator(qs, size, page_hint=hint)  # type: ignore[assignment]  # DRF types it as the class
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        response = super().get_paginated_response(data)
        response.data["count_exact"] = self.page.paginator.count_exact  # type: ignore[union-attr]  # always a BoundedPaginator here
        return response

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        out = super().get_paginated_response_schema(schema)
        out["properties"]["count"]["description"] = (
            "Matching results: exact when count_exact is true, else a lower bound (more follow; see next)."
        )
        out["properties"]["count_exact"] = {"type": "boolean", "example": True}
        return out
