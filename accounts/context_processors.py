from __future__ import annotations

from django.http import HttpRequest

from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION


def roles(request: HttpRequest) -> dict[str, bool]:
    user = request.user
    if not user.is_authenticated:
        return {"can_upload": False, "can_review": False, "is_admin": False}
    return {
        "can_upload": user.has_perm(UPLOAD_PERMISSION),
        "can_review": user.has_perm(REVIEW_PERMISSION),
        "is_admin": user.is_staff,
    }
