"""The worker's model cache: loaded, warmed models per process, one per active
version (one per task when several tasks are served), dropped when a version is no
longer active. TensorFlow is imported here lazily so the web
process never pays for it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from diagnostics.models import ModelVersion

if TYPE_CHECKING:
    from diagnostics.ml.runner import InferenceRunner

_lock = threading.Lock()
_cached: dict[str, InferenceRunner] = {}


def bundle_dir_for(model_version: ModelVersion) -> Path:
    """Registered bundles lie in MODEL_DIR (the registry keeps their folder's name
    there) on the host that registered them; a worker host without that folder uses
    its cached copy from object storage, fetched on first use (diagnostics/model_store.py).
    Either way the runner checks the model file's SHA-256 before it loads it."""
    from diagnostics.ml.bundle import MANIFEST_NAME
    from diagnostics.model_store import bundle_fetch

    local = Path(settings.MODEL_DIR) / model_version.bundle_path
    if (local / MANIFEST_NAME).is_file():
        return local
    return bundle_fetch(model_sha256=model_version.sha256, labels=list(model_version.labels))


def runner_for(model_version: ModelVersion) -> InferenceRunner:
    with _lock:
        runner = _cached.get(model_version.sha256)
        if runner is not None:
            return runner
        from diagnostics.ml.bundle import BundleError
        from diagnostics.ml.runner import InferenceRunner

        runner = InferenceRunner(bundle_dir_for(model_version))  # verifies the file's hash
        if runner.manifest.model_sha256 != model_version.sha256:
            raise BundleError("the model file on disk is not the registered version (SHA-256 differs)")
        # Keep only models that are still active or in shadow, so a retired one frees its memory.
        active = set(
            ModelVersion.objects.filter(
                status__in=[ModelVersion.Status.ACTIVE, ModelVersion.Status.CANDIDATE]
            ).values_list("sha256", flat=True)
        )
        for sha in [s for s in _cached if s not in active]:
            del _cached[sha]
        _cached[model_version.sha256] = runner
        return runner
