"""Knowing when not to answer (diagnostics/ml/ood.py, ood_fit.py): the distances, the
threshold, the image checks, the bundle's reference, and the bundled models on real
images of their own and of the other task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml import ood
from diagnostics.ml.bundle import BundleError, manifest_from_dict, read_manifest, verify_bundle
from diagnostics.ml.ood_fit import card_with_ood_section, fit_bundle
from diagnostics.ml.runner import InferenceRunner

from .conftest import DEMO_BUNDLE, PCAM, write_class_folder

REPO = DEMO_BUNDLE.parents[1]
BUSI_BUNDLE = REPO / "models" / "busi-small-cnn"
BUSI = PCAM.parent / "busi"


def _clusters(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    centres = np.array([[0.0] * 8, [5.0] * 8])
    return centres[y] + rng.normal(0, 1, (n, 8)), y


def test_mahalanobis_distance_is_small_near_a_class_and_large_far_from_both() -> None:
    x, y = _clusters()
    reference = ood.fit_reference(x, y, 2)
    near = reference.scores(np.array([[0.1] * 8, [4.9] * 8]))
    far = reference.scores(np.array([[20.0] * 8, [-10.0, 10.0] * 4]))
    assert near.max() < 3  # about one unit per dimension from a centre
    assert far.min() > 100
    # The nearest class counts: a point at class 1's mean is as close as one at class 0's.
    assert abs(near[0] - near[1]) < 1


def test_the_threshold_flags_at_most_the_chosen_share_of_held_out_inliers() -> None:
    x, y = _clusters(2000, seed=1)
    reference = ood.fit_reference(x[:1000], y[:1000], 2)
    held_out = reference.scores(x[1000:])
    threshold = ood.choose_threshold(held_out, max_inlier_rate=0.05)
    assert ood.flag_rate(held_out, threshold) <= 0.05
    assert ood.flag_rate(held_out, threshold) > 0.03  # the quantile, not a limit that flags nothing
    with pytest.raises(ood.OodError):
        ood.choose_threshold(np.zeros(0))


def test_a_tiny_black_square_is_too_small_and_blank_and_a_textured_image_is_neither() -> None:
    section = {"min_side": 48, "min_std": 4.0, "threshold": 10.0, "image_threshold": 10.0}
    black = np.zeros((96, 96, 3), np.uint8)  # a 10 x 10 square, upscaled to the input size
    assert ood.reasons(width=10, height=10, image=black, feature_score=1.0, image_score=1.0, section=section) == [
        ood.REASON_TOO_SMALL,
        ood.REASON_BLANK,
    ]
    textured = np.random.default_rng(0).integers(0, 255, (96, 96, 3)).astype(np.uint8)
    assert ood.reasons(width=96, height=96, image=textured, feature_score=1.0, image_score=1.0, section=section) == []
    far = ood.reasons(width=96, height=96, image=textured, feature_score=11.0, image_score=1.0, section=section)
    assert far == [ood.REASON_FEATURES]
    assert ood.reasons(width=96, height=96, image=textured, feature_score=1.0, image_score=11.0, section=section) == far


def test_image_statistics_tell_grey_from_stained() -> None:
    grey = np.repeat(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)), 3, axis=-1).astype(np.uint8)
    stained = np.stack([np.full((32, 32, 3), (200, 80, 160), np.uint8), np.full((32, 32, 3), (150, 40, 120), np.uint8)])
    g, s = ood.image_statistics(grey), ood.image_statistics(stained)
    assert g.shape == (2, 9)
    assert np.allclose(g[:, 6], 0) and (s[:, 6] > 0.3).all()  # the chroma column
    with pytest.raises(ood.OodError):
        ood.image_statistics(np.zeros((2, 32, 32), np.uint8))


def test_references_survive_a_round_trip_and_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    x, y = _clusters()
    refs = ood.References(ood.fit_reference(x, y, 2), ood.fit_reference(x[:, :3], np.zeros(len(x), int), 1))
    path = tmp_path / ood.OOD_FILE
    path.write_bytes(refs.to_bytes())
    back = ood.References.from_file(path)
    assert np.array_equal(back.features.precision, refs.features.precision)
    assert np.array_equal(back.images.class_means, refs.images.class_means)
    path.write_bytes(b"not an npz")
    with pytest.raises(ood.OodError, match="cannot read"):
        ood.References.from_file(path)


def test_the_bundled_models_carry_a_verified_reference_within_the_goals() -> None:
    for bundle in (DEMO_BUNDLE, BUSI_BUNDLE):
        section = verify_bundle(bundle).ood
        assert section["file"] == ood.OOD_FILE and section["method"] == ood.METHOD
        measured = section["measured"]
        assert measured["own_report_flagged"] <= 0.05, bundle.name
        assert measured["other_report_flagged"] >= 0.95, bundle.name
        assert len(section["reference_scores"]) > 50


def test_a_changed_reference_file_or_a_bad_ood_field_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "demo"
    shutil.copytree(DEMO_BUNDLE, bundle)
    (bundle / ood.OOD_FILE).write_bytes((bundle / ood.OOD_FILE).read_bytes() + b"x")
    with pytest.raises(BundleError, match="does not match"):
        verify_bundle(bundle)
    raw = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    for bad, message in (
        ({**raw["ood"], "file": "../elsewhere.npz"}, "plain file name"),
        ({**raw["ood"], "threshold": -1}, "ood.threshold"),
        ({**raw["ood"], "min_side": True}, "ood.min_side"),
        ({**raw["ood"], "sha256": "abc"}, "ood.sha256"),
    ):
        with pytest.raises(BundleError, match=message):
            manifest_from_dict({**raw, "ood": bad})


def _real(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]


def test_the_pcam_model_flags_ultrasound_and_a_black_square_but_not_its_own_patches() -> None:
    runner = InferenceRunner(DEMO_BUNDLE)

    def flags(datas: list[bytes], sizes: list[tuple[int, int]]) -> list[list[str]]:
        batch = np.stack([runner.preprocess(d) for d in datas])
        return [r["reasons"] for r in runner.ood_reasons(runner.run(batch, heatmaps=True), batch, sizes)]

    ultrasound = [p.read_bytes() for p in _real(BUSI / "benign", 6)]
    assert all(flags(ultrasound, [(256, 256)] * len(ultrasound)))
    import io

    from PIL import Image

    square = io.BytesIO()
    Image.new("RGB", (10, 10), (0, 0, 0)).save(square, format="PNG")
    (black,) = flags([square.getvalue()], [(10, 10)])
    assert ood.REASON_TOO_SMALL in black and ood.REASON_BLANK in black
    own = [
        p.read_bytes() for p in _real(PCAM / "valid" / "metastasis", 10) + _real(PCAM / "valid" / "no-metastasis", 10)
    ]
    assert sum(bool(r) for r in flags(own, [(96, 96)] * len(own))) <= 2


def test_fit_bundle_writes_a_reference_the_runner_uses_and_keeps_the_card(tmp_path: Path) -> None:
    """On a small two-class set in the demo model's input size: the three roles, the
    manifest section, the hand-written card kept with the section put before its
    limitations, and a runner that loads the result."""
    data = tmp_path / "data"
    write_class_folder(data / "no-metastasis", 30, (200, 120, 180), seed=1, size=96)
    write_class_folder(data / "metastasis", 30, (120, 60, 160), seed=2, size=96)
    (data / "dataset.json").write_text(json.dumps({"name": "toy", "labels": ["no-metastasis", "metastasis"]}))
    other = tmp_path / "other" / "grey"
    write_class_folder(other, 10, (128, 128, 128), seed=3, size=96)
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    (bundle / ood.OOD_FILE).unlink()
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.pop("ood")
    (bundle / "manifest.json").write_text(json.dumps(raw))
    (bundle / "MODEL_CARD.md").write_text("# Card\n\n## Notes kept\n\nhand-written\n\n## Limitations\n\n- few\n")

    section = fit_bundle(
        bundle=bundle,
        data=data,
        outliers=[tmp_path / "other"],
        valid_fraction=0.3,
        test_fraction=0.2,
        seed=7,
        fit_limit=None,
        outlier_limit=100,
    )
    assert section["measured"]["roles"]["report"] == "test split (12 images)"  # the roles training uses
    assert section["measured"]["own_report_n"] == 12  # 20 % of 60, stratified
    assert read_manifest(bundle).ood == section
    card = (bundle / "MODEL_CARD.md").read_text()
    assert (
        card.index("## Notes kept") < card.index("## Inputs outside the training data") < card.index("## Limitations")
    )
    assert card_with_ood_section(card, read_manifest(bundle)) == card  # a second fit replaces, not appends
    runner = InferenceRunner(bundle)
    grey = np.full((1, 96, 96, 3), 128, np.uint8)
    (result,) = runner.ood_reasons(runner.run(grey, heatmaps=True), grey, [(96, 96)])
    assert result["score"] is not None and ood.REASON_BLANK in result["reasons"]


# --- whole slides ------------------------------------------------------------------------


def _analyse(image: np.ndarray, runner: InferenceRunner) -> object:
    from diagnostics.ml.slides import analyse
    from tests.slides_tests.slide_factory import ArraySlide

    return analyse(
        ArraySlide(image),
        slide_mpp=0.972,
        model_mpp=0.972,
        input_size=runner.input_size,
        labels=runner.labels,
        predict=runner.predict_tiles,
        batch_size=32,
        threads=1,
    )


def test_a_slide_of_ultrasound_is_outside_the_pcam_model_and_one_of_its_own_tissue_is_not() -> None:
    from tests.slides_tests.slide_factory import cells_from, compose

    runner = InferenceRunner(DEMO_BUNDLE)
    own = compose(cells_from(PCAM / "valid" / "no-metastasis", 24), cols=6)
    a = _analyse(own, runner)
    assert a.tissue_tiles >= 18 and a.outside_tiles is not None  # a few patches are mostly fat or glass
    assert a.outside_tiles <= 3  # the per-image rule flags ~3 % of the model's own held-out patches
    assert ood.slide_reasons(tissue_tiles=a.tissue_tiles, outside_tiles=a.outside_tiles) == []
    assert a.summary()["outside_tiles"] == a.outside_tiles

    other = compose(cells_from(BUSI / "benign", 24), cols=6)
    b = _analyse(other, runner)
    assert b.tissue_tiles >= 20  # grey speckle counts as tissue for the mask
    assert b.outside_tiles is not None and b.outside_tiles >= 0.9 * b.tissue_tiles
    assert ood.slide_reasons(tissue_tiles=b.tissue_tiles, outside_tiles=b.outside_tiles) == [ood.REASON_SLIDE_TILES]


def test_slide_reasons_follow_the_half_of_tissue_rule_and_an_empty_slide_has_no_tissue() -> None:
    assert ood.slide_reasons(tissue_tiles=0, outside_tiles=0) == [ood.REASON_SLIDE_NO_TISSUE]
    assert ood.slide_reasons(tissue_tiles=0, outside_tiles=None) == [ood.REASON_SLIDE_NO_TISSUE]
    assert ood.slide_reasons(tissue_tiles=100, outside_tiles=49) == []
    assert ood.slide_reasons(tissue_tiles=100, outside_tiles=50) == [ood.REASON_SLIDE_TILES]
    assert ood.slide_reasons(tissue_tiles=100, outside_tiles=None) == []  # no reference: nothing to tell
    assert set(ood.REASON_TEXT) >= {ood.REASON_SLIDE_NO_TISSUE, ood.REASON_SLIDE_TILES}


def test_the_ood_fit_command_names_a_missing_data_folder_and_writes_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from diagnostics.ml.ood_fit import main

    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    assert main(["--bundle", str(bundle), "--data", str(tmp_path / "no-such-data")]) == 2
    assert "error:" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
