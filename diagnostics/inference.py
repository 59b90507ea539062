"""The worker's model cache: one loaded, warmed model per process, reloaded only
when the active version changes. TensorFlow is imported here lazily so the web
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
_cached: tuple[str, InferenceRunner] | None = None


def bundle_dir_for(model_version: ModelVersion) -> Path:
    path = Path(model_version.bundle_path)
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path


def runner_for(model_version: ModelVersion) -> InferenceRunner:
    global _cached
    with _lock:
        if _cached is not None and _cached[0] == model_version.sha256:
            return _cached[1]
        from diagnostics.ml.bundle import BundleError
        from diagnostics.ml.runner import InferenceRunner

        runner = InferenceRunner(bundle_dir_for(model_version))  # verifies the file's hash
        if runner.manifest.model_sha256 != model_version.sha256:
            raise BundleError("the model file on disk is not the registered version (SHA-256 differs)")
        _cached = (model_version.sha256, runner)
        return runner
