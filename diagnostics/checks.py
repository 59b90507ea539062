"""Start-up check of the object store (`manage.py check`, every management command,
gunicorn's wsgi.py and the Celery worker): a bucket that does not exist or credentials
the store refuses stop start-up with a message saying so; a store that is only
unreachable is a warning (the web answers 503 for what needs it, /health/ reports it,
and everything works again once the store is back)."""

from __future__ import annotations

from typing import Any

from django.core import checks

STORAGE_TAG = "storage"


@checks.register(STORAGE_TAG)
def storage_reachable(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings

    from diagnostics.intake import storage

    if not storage.is_object_store():
        return []
    where = f"s3://{settings.S3_BUCKET}/{settings.S3_PREFIX}".rstrip("/")
    try:
        storage.check_reachable()
    except storage.StorageUnavailable as exc:
        hint = "check CANCERWEB_STORAGE_URL, CANCERWEB_S3_ENDPOINT_URL and the S3 credentials"
        if exc.reason.startswith("cannot reach"):
            return [checks.Warning(f"object store {where}: {exc.reason}", hint=hint, id="cancerweb.W001")]
        return [checks.Error(f"object store {where}: {exc.reason}", hint=hint, id="cancerweb.E001")]
    return []
