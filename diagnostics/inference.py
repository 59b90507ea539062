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

        # Verifies the file's hash; bfloat16 only once the worker's start-up check passed.
        runner = InferenceRunner(bundle_dir_for(model_version), precision=settings.INFERENCE_PRECISION)
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


_DRIFT_SCRIPT = "import sys; from diagnostics.ml.runner import precision_drift; print(precision_drift(sys.argv[1]))"


def precision_check() -> list[str]:
    """With CANCERWEB_INFERENCE_PRECISION=bfloat16: the float32 / bfloat16 drift of every
    active model on its check images, each measured in a child process (the worker's
    main process must not run the network before it forks its pool). Returns what is
    wrong, one line per model beyond diagnostics.ml.runner.BFLOAT16_TOLERANCE."""
    import subprocess
    import sys

    from diagnostics.ml.runner import BFLOAT16_TOLERANCE

    if settings.INFERENCE_PRECISION != "bfloat16":
        return []
    problems = []
    for version in ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).order_by("task"):
        bundle = bundle_dir_for(version)
        done = subprocess.run(  # noqa: S603  # our own interpreter and script, a local path
            [sys.executable, "-c", _DRIFT_SCRIPT, str(bundle)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if done.returncode != 0:
            problems.append(f"{version}: the bfloat16 check could not run: {done.stderr.strip()[-300:]}")
            continue
        drift = float(done.stdout.strip().splitlines()[-1])
        if drift > BFLOAT16_TOLERANCE:
            problems.append(
                f"{version}: bfloat16 moves a probability on its check images by {drift:.4f}, "
                f"more than the tolerance {BFLOAT16_TOLERANCE}"
            )
    return problems
