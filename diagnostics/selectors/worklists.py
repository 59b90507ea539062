"""A worklist poll's version: changes when anything in the user's care units changed
(diagnostics/services/worklists.py), and at least every WORKLIST_MAX_STALE_S seconds.
Costs one small query (the user's units) and one cache read, whatever the data."""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache

from accounts.models import CareUnit, User
from diagnostics.services.worklists import unit_key


def worklist_etag(*, user: User, kind: str, query: str) -> str:
    units = sorted(CareUnit.objects.filter(group__user=user).values_list("id", flat=True))
    try:
        counters = cache.get_many([unit_key(u) for u in units])
    except Exception:  # no cache: every poll is a change, as before
        counters = {"none": time.time()}
    bucket = int(time.time() // settings.WORKLIST_MAX_STALE_S)
    raw = f"{kind}|{user.pk}|{query}|{units}|{sorted(counters.items())}|{bucket}"
    return '"' + hashlib.sha256(raw.encode()).hexdigest()[:32] + '"'
