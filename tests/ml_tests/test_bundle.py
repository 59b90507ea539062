from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from diagnostics.ml.bundle import BundleError, Manifest, read_manifest, sha256_file, verify_bundle

FIELDS = [
    "name",
    "version",
    "task",
    "labels",
    "input_size",
    "preprocessing",
    "temperature",
    "uncertain_below",
    "metrics",
    "data_summary",
    "model_file",
    "model_sha256",
    "library_versions",
]
# Optional: a bundle without them cannot be run on whole slides (issue 12).
OPTIONAL_FIELDS = ["mpp", "slide_method", "drift_reference", "ood", "tta", "calibration"]


def make_bundle(root: Path, **overrides: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model.keras"
    model.write_bytes(b"pretend weights")
    raw: dict[str, Any] = {
        "name": "toy",
        "version": "1.0.0",
        "task": "toy task",
        "labels": ["N0", "N1", "N2"],
        "input_size": 32,
        "preprocessing": "rgb-uint8-bilinear",
        "temperature": 1.5,
        "uncertain_below": 0.6,
        "metrics": {"valid": {"accuracy": 0.9}},
        "data_summary": {"splits": {}},
        "model_file": "model.keras",
        "model_sha256": hashlib.sha256(b"pretend weights").hexdigest(),
        "library_versions": {"keras": "3"},
    }
    raw.update(overrides)
    (root / "manifest.json").write_text(json.dumps(raw))
    return root


def test_valid_bundle_verifies(tmp_path: Path) -> None:
    m = verify_bundle(make_bundle(tmp_path / "b"))
    assert isinstance(m, Manifest)
    assert m.labels == ["N0", "N1", "N2"]
    assert m.temperature == 1.5
    assert [f for f in m.to_dict()] == FIELDS + OPTIONAL_FIELDS


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_file(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_changed_model_file_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "model.keras").write_bytes(b"someone else's weights")
    read_manifest(bundle)  # the manifest itself is fine
    with pytest.raises(BundleError, match="does not match the manifest"):
        verify_bundle(bundle)


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "model.keras").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(bundle)


@pytest.mark.parametrize("field", FIELDS)
def test_each_missing_field_is_named(tmp_path: Path, field: str) -> None:
    bundle = make_bundle(tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    del raw[field]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=f"missing the field '{field}'"):
        read_manifest(bundle)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": ["only"]}, "at least two"),
        ({"labels": ["a", "a"]}, "duplicates"),
        ({"labels": "N0,N1"}, "wrong type"),
        ({"input_size": 0}, "positive"),
        ({"input_size": True}, "wrong type"),
        ({"temperature": 0}, "greater than zero"),
        ({"uncertain_below": 1.5}, "between 0 and 1"),
        ({"preprocessing": "imagenet-mean-std"}, "cannot apply"),
        ({"model_file": "../model.keras"}, "plain file name"),
        ({"model_sha256": "abc"}, "64-character"),
        ({"name": "  "}, "empty"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        read_manifest(make_bundle(tmp_path / "b", **overrides))


def test_missing_folder_manifest_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(tmp_path / "empty")
    bundle = make_bundle(tmp_path / "b")
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(bundle)


def test_mpp_is_optional_and_checked(tmp_path: Path) -> None:
    assert verify_bundle(make_bundle(tmp_path / "a")).mpp is None
    assert verify_bundle(make_bundle(tmp_path / "b", mpp=0.972)).mpp == 0.972
    with pytest.raises(BundleError, match="mpp"):
        verify_bundle(make_bundle(tmp_path / "c", mpp=-1))
