"""Filters every list API shares."""

from __future__ import annotations

import django_filters


class CreatedRangeFilterSet(django_filters.FilterSet):
    """``created_after`` / ``created_before`` (ISO 8601 date-times) on ``created_at``."""

    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
