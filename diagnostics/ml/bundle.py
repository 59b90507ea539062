"""Model bundles: a folder holding `manifest.json` and the model file it names.

The manifest is the contract between a trained model and the application: the ordered
label list, input size, calibration temperature and the measured metrics all travel
with the weights, and the SHA-256 ties them to exactly one model file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .augment import TTA_MODES
from .calibration import CalibrationError
from .calibration import validate as validate_calibration
from .preprocess import PREPROCESSING_ID

MANIFEST_NAME = "manifest.json"
KNOWN_PREPROCESSING = frozenset({PREPROCESSING_ID})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BundleError(Exception):
    """A model bundle is missing, malformed, or does not match its manifest."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    task: str
    labels: list[str]  # ordered least -> most advanced
    input_size: int
    preprocessing: str
    temperature: float
    uncertain_below: float
    metrics: dict[str, Any]
    data_summary: dict[str, Any]
    model_file: str
    model_sha256: str
    library_versions: dict[str, Any]
    # Micrometres per pixel of the images the model was trained on: whole slides are
    # cut into tiles at this resolution. None: the model cannot be run on slides.
    mpp: float | None = None
    # Parameters of the slide-level method chosen for this model (diagnostics/ml/slides.py).
    slide_method: dict[str, Any] = field(default_factory=dict)
    # Input and output statistics of the validation images at training time
    # (diagnostics/ml/drift.py reference_stats): the drift check's reference. Empty in
    # bundles made before it existed; the check then uses the first predictions.
    drift_reference: dict[str, Any] = field(default_factory=dict)
    # The out-of-distribution reference (diagnostics/ml/ood.py): its file and SHA-256,
    # the threshold, the image checks' limits and the measured flag rates. Empty: the
    # bundle cannot tell an input unlike its training data, and no input is flagged.
    ood: dict[str, Any] = field(default_factory=dict)
    # Test-time averaging of the logits over views (augment.py TTA_MODES): part of the
    # model, so every inference and evaluation path applies it.
    tta: str = "none"
    # How logits become probabilities (calibration.py): {} means softmax(z / temperature).
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(raw: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in raw:
        raise BundleError(f"manifest is missing the field '{key}'")
    value = raw[key]
    # bool is an int subclass; a manifest saying `"input_size": true` is a mistake.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BundleError(f"manifest field '{key}' has the wrong type (got a boolean)")
    if not isinstance(value, kind):
        raise BundleError(f"manifest field '{key}' has the wrong type (got {type(value).__name__})")
    return value


def _nonempty_str(raw: dict[str, Any], key: str) -> str:
    value: str = _require(raw, key, str)
    if not value.strip():
        raise BundleError(f"manifest field '{key}' is empty")
    return value


def _finite(raw: dict[str, Any], key: str) -> float:
    value = float(_require(raw, key, (int, float)))
    if not math.isfinite(value):
        raise BundleError(f"manifest field '{key}' is not a finite number")
    return value


def manifest_from_dict(raw: Any) -> Manifest:
    """Validate a decoded manifest and build a `Manifest`; raises `BundleError`."""
    if not isinstance(raw, dict):
        raise BundleError("manifest is not a JSON object")

    labels = _require(raw, "labels", list)
    if len(labels) < 2:
        raise BundleError("manifest 'labels' must list at least two labels")
    if not all(isinstance(label, str) and label.strip() for label in labels):
        raise BundleError("manifest 'labels' must be non-empty strings")
    if len(set(labels)) != len(labels):
        raise BundleError("manifest 'labels' contains duplicates")

    input_size = _require(raw, "input_size", int)
    if input_size <= 0:
        raise BundleError("manifest 'input_size' must be a positive integer")

    preprocessing = _nonempty_str(raw, "preprocessing")
    if preprocessing not in KNOWN_PREPROCESSING:
        raise BundleError(
            f"manifest 'preprocessing' is '{preprocessing}', which this version cannot "
            f"apply (known: {', '.join(sorted(KNOWN_PREPROCESSING))})"
        )

    temperature = _finite(raw, "temperature")
    if temperature <= 0:
        raise BundleError("manifest 'temperature' must be greater than zero")
    uncertain_below = _finite(raw, "uncertain_below")
    if not 0.0 <= uncertain_below <= 1.0:
        raise BundleError("manifest 'uncertain_below' must be between 0 and 1")

    model_file = _nonempty_str(raw, "model_file")
    # The model file must sit inside the bundle folder: no paths, no parent references.
    if Path(model_file).name != model_file or model_file in (".", ".."):
        raise BundleError("manifest 'model_file' must be a plain file name inside the bundle")
    model_sha256 = _nonempty_str(raw, "model_sha256").lower()
    if not _SHA256_RE.match(model_sha256):
        raise BundleError("manifest 'model_sha256' is not a 64-character hex SHA-256")

    mpp = None
    if raw.get("mpp") is not None:
        mpp = _finite(raw, "mpp")
        if not 0.01 <= mpp <= 100:
            raise BundleError("manifest 'mpp' (micrometres per pixel) must be between 0.01 and 100")
    slide_method = raw.get("slide_method") or {}
    if not isinstance(slide_method, dict):
        raise BundleError("manifest field 'slide_method' must be an object")

    drift_reference = raw.get("drift_reference") or {}
    if not isinstance(drift_reference, dict):
        raise BundleError("manifest field 'drift_reference' must be an object")

    ood_section = raw.get("ood") or {}
    if not isinstance(ood_section, dict):
        raise BundleError("manifest field 'ood' must be an object")
    if ood_section:
        ood_file = ood_section.get("file")
        if not isinstance(ood_file, str) or Path(ood_file).name != ood_file or ood_file in ("", ".", ".."):
            raise BundleError("manifest 'ood.file' must be a plain file name inside the bundle")
        if not isinstance(ood_section.get("sha256"), str) or not _SHA256_RE.match(ood_section["sha256"]):
            raise BundleError("manifest 'ood.sha256' is not a 64-character hex SHA-256")
        for key in ("threshold", "min_side", "min_std"):
            value = ood_section.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise BundleError(f"manifest 'ood.{key}' must be a finite number of at least 0")

    tta = raw.get("tta") or "none"
    if tta not in TTA_MODES:
        raise BundleError(f"manifest 'tta' is '{tta}', which this version cannot apply (known: {', '.join(TTA_MODES)})")
    try:
        calibration = validate_calibration(raw.get("calibration"), len(labels))
    except CalibrationError as exc:
        raise BundleError(str(exc)) from exc

    return Manifest(
        tta=tta,
        calibration=calibration,
        ood=ood_section,
        mpp=mpp,
        slide_method=slide_method,
        drift_reference=drift_reference,
        name=_nonempty_str(raw, "name"),
        version=_nonempty_str(raw, "version"),
        task=_nonempty_str(raw, "task"),
        labels=list(labels),
        input_size=input_size,
        preprocessing=preprocessing,
        temperature=temperature,
        uncertain_below=uncertain_below,
        metrics=_require(raw, "metrics", dict),
        data_summary=_require(raw, "data_summary", dict),
        model_file=model_file,
        model_sha256=model_sha256,
        library_versions=_require(raw, "library_versions", dict),
    )


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate `bundle_dir/manifest.json`; raises `BundleError`."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"model bundle folder {bundle_dir} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BundleError(f"model bundle {bundle_dir} has no {MANIFEST_NAME}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    return manifest_from_dict(raw)


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """`read_manifest`, then check the model file's SHA-256 against the manifest."""
    manifest = read_manifest(bundle_dir)
    model_path = Path(bundle_dir) / manifest.model_file
    if not model_path.is_file():
        raise BundleError(f"model file {manifest.model_file} named in the manifest is missing")
    actual = sha256_file(model_path)
    if actual != manifest.model_sha256:
        raise BundleError(
            f"model file {manifest.model_file} does not match the manifest "
            f"(SHA-256 {actual[:12]}..., expected {manifest.model_sha256[:12]}...): "
            "the file was changed or replaced after training"
        )
    if manifest.ood:
        ood_path = Path(bundle_dir) / manifest.ood["file"]
        if not ood_path.is_file():
            raise BundleError(f"out-of-distribution reference {manifest.ood['file']} named in the manifest is missing")
        if sha256_file(ood_path) != manifest.ood["sha256"]:
            raise BundleError(
                f"out-of-distribution reference {manifest.ood['file']} does not match the manifest's SHA-256"
            )
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Validate and write `manifest.json` atomically (temp file + rename)."""
    manifest_from_dict(manifest.to_dict())
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_name(MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
