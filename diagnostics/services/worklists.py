"""Tell the worklists of a care unit that something in them changed.

Every open queue or case-list tab polls every 2 s; re-running the full worklist query
for each poll kept half a core busy per tab at 100k cases. Instead each care unit has a
change counter in the shared cache (Redis outside the demo), bumped after commit by
the writes that change a worklist (an upload, a stored prediction, a failed job, a
signature); a poll whose counters have not moved answers 304 without running the
query (diagnostics/selectors/worklists.py). A missed bump is harmless: the poll's
version also changes every WORKLIST_MAX_STALE_S seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger(__name__)


def unit_key(unit_id: int) -> str:
    return f"worklist:unit:{unit_id}"


def worklists_changed(*, unit_ids: Iterable[int | None]) -> None:
    """After the current transaction commits, bump these units' change counters. Never
    fails the write: a cache that is down only means polls refresh on the time bound."""
    ids = sorted({u for u in unit_ids if u is not None})
    if not ids:
        return

    def bump() -> None:
        for unit_id in ids:
            try:
                key = unit_key(unit_id)
                cache.add(key, 0, timeout=None)
                cache.incr(key)
            except Exception:  # the cache is a hint; the time bound covers a missed bump
                logger.warning("could not bump a worklist change counter", exc_info=True)

    transaction.on_commit(bump)
