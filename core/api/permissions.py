"""Role checks for API views. Object visibility is not decided here: read views
take their objects from the selectors, which answer 404 for anything the user may
not see (DRF's own object permissions skip GET)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission


def has_perm(perm: str, *, message: str) -> type[BasePermission]:
    class HasPerm(BasePermission):
        def has_permission(self, request: Any, view: Any) -> bool:
            return bool(request.user and request.user.is_authenticated and request.user.has_perm(perm))

    HasPerm.message = message  # type: ignore[attr-defined]  # DRF reads it from the permission class
    HasPerm.__name__ = f"HasPerm_{perm.replace('.', '_')}"
    return HasPerm
