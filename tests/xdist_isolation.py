"""Parallel test processes (pytest-xdist) must not meet outside their own database.

pytest-django already gives each xdist worker its own test database (``test_<name>_gw0``).
This plugin, loaded with ``-p`` before Django's settings are read, gives each worker its
own Redis database (Celery queues, cache, worklist change counters), its own data folder
(scans, broker folder, bundle cache) and its own prefix in the object store, so a test
that flushes its broker or lists its stored objects sees only its own. Without xdist it
changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path


def _isolate(worker: str) -> None:
    index = int(worker.removeprefix("gw"))
    for name in ("CELERY_BROKER_URL", "CANCERWEB_CACHE_URL"):
        url = os.environ.get(name, "")
        if url.startswith(("redis://", "rediss://")):
            base, _, db = url.rpartition("/")
            # Count down from the configured database: 15 -> 14, 13 for gw0, gw1.
            os.environ[name] = f"{base}/{(int(db or 0) - 1 - index) % 16}"
    storage_url = os.environ.get("CANCERWEB_STORAGE_URL", "")
    if storage_url.startswith("s3://"):
        os.environ["CANCERWEB_STORAGE_URL"] = f"{storage_url.rstrip('/')}/{worker}"
    data_dir = os.environ.get("CANCERWEB_DATA_DIR")
    if data_dir:
        own = Path(data_dir) / worker
        own.mkdir(parents=True, exist_ok=True)
        # Static files are collected once, before the workers start, and only read.
        os.environ.setdefault("DJANGO_STATIC_ROOT", str(Path(data_dir) / "staticfiles"))
        os.environ["CANCERWEB_DATA_DIR"] = str(own)


if worker_id := os.environ.get("PYTEST_XDIST_WORKER"):
    _isolate(worker_id)
