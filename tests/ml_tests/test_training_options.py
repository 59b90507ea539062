"""The training options of issue 14 on a handful of images, without full training runs:
stain augmentation in HED space, the dihedral test-time views (and that averaging over
them makes the model invariant to rotating its input), vector scaling, the bootstrap
intervals and reliability points of the card, and the options' checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml import metrics as M
from diagnostics.ml.augment import augment_batch, hed_jitter, unviews, view_count, views
from diagnostics.ml.bundle import BundleError, manifest_from_dict, read_manifest
from diagnostics.ml.calibration import (
    CalibrationError,
    choose_calibration,
    describe,
    fit_vector_scaling,
    probabilities,
    validate,
)
from diagnostics.ml.datasets import DatasetError, seeded_halves
from diagnostics.ml.evaluate import EvaluationError, evaluate_bundle
from diagnostics.ml.runner import InferenceRunner
from diagnostics.ml.train import TrainConfig, train_bundle

from .conftest import DEMO_BUNDLE


def _tf_batch(seed: int, shape: tuple[int, ...] = (4, 16, 16, 3)) -> object:
    import tensorflow as tf

    return tf.constant(np.random.default_rng(seed).uniform(0, 255, shape), tf.float32)


# --- stain augmentation -----------------------------------------------------------------


def test_hed_jitter_with_zero_sigma_is_the_identity() -> None:
    import tensorflow as tf

    batch = _tf_batch(0)
    out = hed_jitter(batch, tf.constant([3, 4], tf.int64), 0.0).numpy()
    assert np.max(np.abs(out - batch.numpy())) < 0.05  # float round trip RGB -> HED -> RGB


def test_hed_jitter_keeps_values_in_range_and_changes_colour() -> None:
    import tensorflow as tf

    extremes = np.zeros((3, 8, 8, 3), np.float32)
    extremes[1] = 255.0
    extremes[2, ..., 0] = 255.0  # pure red: far outside any stain mixture
    batch = tf.concat([_tf_batch(1, (3, 8, 8, 3)), tf.constant(extremes)], axis=0)
    seed = tf.constant([5, 6], tf.int64)
    out = hed_jitter(batch, seed, 0.5).numpy()
    assert out.shape == (6, 8, 8, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0
    assert np.max(np.abs(out[:3] - batch.numpy()[:3])) > 5.0  # it does change the colours
    assert np.array_equal(out, hed_jitter(batch, seed, 0.5).numpy())  # stateless


def test_augment_batch_with_hed_colour_keeps_shape_and_range() -> None:
    import tensorflow as tf

    batch = _tf_batch(2)
    seed = tf.constant([1, 2], tf.int64)
    hed = augment_batch(batch, seed, colour="hed", stain_sigma=0.1).numpy()
    hsv = augment_batch(batch, seed, colour="hsv").numpy()
    assert hed.shape == (4, 16, 16, 3) and hed.min() >= 0 and hed.max() <= 255
    assert not np.allclose(hed, hsv)  # a different colour change on the same geometry


# --- test-time views --------------------------------------------------------------------


def test_dihedral_views_are_the_eight_distinct_transforms_and_unviews_undoes_them() -> None:
    x = np.arange(2 * 5 * 5 * 1).reshape(2, 5, 5, 1)
    vs = views(np, x, "dihedral8")
    assert len(vs) == view_count("dihedral8") == 8
    assert len({v.tobytes() for v in vs}) == 8
    assert all(np.array_equal(back, x) for back in unviews(np, vs, "dihedral8"))
    lr = views(np, x, "flip-lr")
    assert np.array_equal(lr[1], x[:, :, ::-1]) and all(np.array_equal(b, x) for b in unviews(np, lr, "flip-lr"))
    assert views(np, x, "none") == [x]


def _copy_with_views(root: Path, tta: str) -> Path:
    """The demo bundle's weights with the given test-time views and no OOD reference
    (the reference belongs to the bundle's own views)."""
    folder = root / tta
    shutil.copytree(DEMO_BUNDLE, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["tta"] = tta
    raw["ood"] = {}
    (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


@pytest.fixture(scope="module")
def tta_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_with_views(tmp_path_factory.mktemp("tta"), "dihedral8")


@pytest.fixture(scope="module")
def single_view_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_with_views(tmp_path_factory.mktemp("tta"), "none")


def test_dihedral_averaging_is_invariant_to_rotating_and_reflecting_the_input(
    tta_bundle: Path, single_view_bundle: Path
) -> None:
    runner = InferenceRunner(tta_bundle)
    x = np.random.default_rng(3).integers(0, 255, (3, runner.input_size, runner.input_size, 3), dtype=np.uint8)
    base = runner.run(x, heatmaps=True)
    assert base.heatmaps is not None and base.features is not None
    for k in (1, 2, 3):
        turned = runner.run(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))), heatmaps=True)
        assert np.max(np.abs(turned.probabilities - base.probabilities)) < 1e-5
        assert turned.heatmaps is not None  # the heat map turns with the image
        assert np.max(np.abs(turned.heatmaps - np.rot90(base.heatmaps, k, axes=(1, 2)))) < 1e-4
    mirrored = runner.run(np.ascontiguousarray(x[:, :, ::-1]), heatmaps=False)
    assert np.max(np.abs(mirrored.probabilities - base.probabilities)) < 1e-5
    # Without averaging the same network does depend on the orientation.
    plain = InferenceRunner(single_view_bundle)
    turned_plain = plain.bare_call(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))))
    assert np.max(np.abs(turned_plain - plain.bare_call(x))) > 1e-3
    # The averaged logits are the mean of the eight views' logits.
    by_view = np.mean([plain.bare_call(np.ascontiguousarray(v)) for v in views(np, x, "dihedral8")], axis=0)
    assert np.max(np.abs(runner.bare_call(x) - by_view)) < 1e-4


def test_an_unknown_tta_mode_is_refused() -> None:
    raw = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    with pytest.raises(BundleError, match="'tta' is 'rot45'"):
        manifest_from_dict({**raw, "tta": "rot45"})


# --- calibration ------------------------------------------------------------------------


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes whose logits are over-confident in class 0 and shifted against 2."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    true_logits = rng.normal(0, 1.0, (n, 3)) + 2.0 * np.eye(3)[y]
    logits = true_logits * np.array([3.0, 1.0, 0.6]) + np.array([0.0, 0.0, -1.0])
    return y, logits


def test_vector_scaling_beats_one_temperature_on_class_specific_miscalibration() -> None:
    y, logits = _miscalibrated(3000, 0)
    y_new, logits_new = _miscalibrated(3000, 1)  # judged on data it was not fitted on
    vector = fit_vector_scaling(y, logits)
    t = M.fit_temperature(y, logits)
    nll_vector = M.nll(y_new, probabilities(logits_new, temperature=1.0, calibration=vector))
    nll_temperature = M.nll(y_new, probabilities(logits_new, temperature=t))
    assert nll_vector < nll_temperature - 0.01
    ece_vector = M.expected_calibration_error(y_new, probabilities(logits_new, temperature=1.0, calibration=vector))
    assert ece_vector < M.expected_calibration_error(y_new, M.softmax(logits_new))
    assert validate(vector, 3) == vector


def test_auto_calibration_chooses_by_cross_validation_on_the_selection_split_only() -> None:
    y, logits = _miscalibrated(1500, 2)
    method, cv = choose_calibration(y, logits, seed=0)
    assert method == "vector" and cv["vector"] < cv["temperature"]
    # A network that is only too confident overall: one temperature is all it needs.
    rng = np.random.default_rng(3)
    y2 = rng.integers(0, 2, 1500)
    z2 = (rng.normal(0, 1.0, (1500, 2)) + 1.5 * np.eye(2)[y2]) * 4.0
    method2, cv2 = choose_calibration(y2, z2, seed=0)
    assert abs(cv2["vector"] - cv2["temperature"]) < 0.01  # the extra parameters buy nothing
    section = {"method": method, **fit_vector_scaling(y, logits), "chosen_by": {"rule": "r", **cv}}
    assert "chosen by the r" in describe(section, 1.0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"method": "isotonic"}, "method 'isotonic' is unknown"),
        ({"method": "vector", "scale": [1.0, 1.0], "bias": [0, 0, 0]}, "scale must list 3"),
        ({"method": "vector", "scale": [1.0, 1.0, float("nan")], "bias": [0, 0, 0]}, "scale must list 3"),
        ({"method": "vector", "scale": [1.0, -1.0, 1.0], "bias": [0, 0, 0]}, "greater than zero"),
        ("vector", "must be an object"),
    ],
)
def test_a_malformed_calibration_is_refused(section: object, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        validate(section, 3)


# --- card statistics --------------------------------------------------------------------


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_images() -> None:
    rng = np.random.default_rng(4)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        score = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0.01, 0.99)
        return y, np.stack([1 - score, score], axis=1)

    y_small, p_small = sample(100)
    y_big, p_big = sample(2000)
    small = M.bootstrap_intervals(y_small, p_small, reps=300, seed=0)
    big = M.bootstrap_intervals(y_big, p_big, reps=300, seed=0)
    acc = M.accuracy(y_small, p_small.argmax(axis=1))
    assert small["accuracy"][0] <= acc <= small["accuracy"][1]
    auc = M.roc_auc(y_small, p_small)
    assert small["roc_auc"][0] <= auc <= small["roc_auc"][1]
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "ece"):
        assert big[key][1] - big[key][0] < small[key][1] - small[key][0]


def test_reliability_bins_count_every_image_once() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.55, 0.95, 0.62, 0.05, 0.97])
    bins = M.reliability_bins(y, np.stack([1 - p1, p1], axis=1))
    assert sum(b["n"] for b in bins) == 5
    top = [b for b in bins if b["lo"] == 0.9][0]
    assert top["n"] == 3 and top["accuracy"] == 1.0  # 0.95, 0.97 and 1 - 0.05


def test_stratified_halves_keep_every_class_in_both() -> None:
    labels = np.array([0] * 3 + [1] * 10 + [2] * 2)
    a, b = seeded_halves(len(labels), 7, labels)
    assert not set(a) & set(b) and len(a) + len(b) == len(labels)
    assert set(labels[a]) == set(labels[b]) == {0, 1, 2}
    assert np.array_equal(seeded_halves(len(labels), 7, labels)[0], a)


# --- the options in a training run ------------------------------------------------------


def test_a_training_run_with_every_option_records_them_and_reports_apart(synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    config = TrainConfig(
        data=synthetic_data,
        out=out,
        name="toy",
        version="0.3",
        epochs=1,
        image_size=32,
        batch_size=8,
        test_fraction=0.25,
        colour_augmentation="hed",
        tta="dihedral8",
        calibration="vector",
        mpp=0.972,
        check_images=2,
        verbose=0,
    )
    manifest = train_bundle(config)
    assert read_manifest(out) == manifest
    assert manifest.mpp == 0.972 and manifest.slide_method["top_k"] == 5  # the slide method's defaults
    assert sorted(p.name for p in (out / "check_images").iterdir()) == [
        "adverse-0.png",
        "adverse-1.png",
        "benign-0.png",
        "benign-1.png",
    ]
    assert manifest.tta == "dihedral8" and manifest.calibration["method"] == "vector"
    assert manifest.calibration["fitted_on"] == "select" and manifest.temperature == 1.0
    options = manifest.metrics["training"]["options"]
    assert options["colour_augmentation"] == "hed" and options["tta"] == "dihedral8"
    assert "stain amounts" in manifest.metrics["training"]["augmentation"]
    report = manifest.metrics["report"]
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "ece"):
        lo, hi = report["ci95"][key]
        assert lo <= hi
    assert sum(b["n"] for b in report["reliability"]) == report["n"] == 6
    card = (out / "MODEL_CARD.md").read_text()
    assert "Reliability diagram (report split" in card and "vector scaling" in card
    assert "Test-time averaging over the views `dihedral8`" in card
    # The runner applies the recorded views and calibration: rotating an input changes nothing.
    runner = InferenceRunner(out)
    x = np.random.default_rng(5).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    p = runner.predict_arrays(x)
    assert np.allclose(p, runner.predict_arrays(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))), atol=1e-5)
    logits = runner.bare_call(x)
    assert np.allclose(p, probabilities(logits, temperature=1.0, calibration=manifest.calibration))
    # evaluate_model re-derives the same report split from the data folder and the
    # manifest, and measures the same figures through the runner.
    result = evaluate_bundle(out, synthetic_data, tmp_path / "eval", report_split=True)
    assert result["n"] == report["n"]
    assert result["split"].endswith("(used for neither training, epoch choice nor calibration)")
    assert result["accuracy"] == pytest.approx(report["accuracy"])
    assert result["roc_auc"] == pytest.approx(report["roc_auc"], abs=1e-6)
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "95 % interval, stratified percentile bootstrap, 1000 resamples" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour_augmentation": "lab"}, "unknown colour augmentation 'lab'"),
        ({"stain_sigma": 0.9}, "--stain-sigma must be between 0 and 0.5"),
        ({"tta": "rot45"}, "unknown test-time averaging 'rot45'"),
        ({"tta": "dihedral8", "augmentation": "horizontal"}, "needs --augmentation dihedral"),
        ({"calibration": "isotonic"}, "unknown calibration 'isotonic'"),
        ({"mpp": 500.0}, "--mpp .* must be between 0.01 and 100"),
        ({"members": 0}, "--members must be between 1 and 5"),
        ({"ema": 1.0}, "--ema must be 0"),
        ({"weight_decay": -0.1}, "--weight-decay must be 0 or more"),
    ],
)
def test_bad_options_stop_before_anything_is_read_or_written(
    synthetic_data: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    out = tmp_path / "never"
    config = TrainConfig(data=synthetic_data, out=out, name="t", version="1", epochs=1, image_size=32, verbose=0)
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(DatasetError, match=message):
        train_bundle(config)
    assert not out.exists()


# --- ensembles ---------------------------------------------------------------------------


def test_an_ensemble_network_gives_exactly_the_mean_of_its_members_logits() -> None:
    import keras

    from diagnostics.ml.models import build_ensemble, build_model

    members = []
    for seed in (1, 2, 3):
        keras.utils.set_random_seed(seed)
        members.append(build_model("small_cnn", 32, 3))
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    ensemble = build_ensemble(members)
    mean = np.mean([np.asarray(m(x, training=False)) for m in members], axis=0)
    got = np.asarray(ensemble(x, training=False))
    assert np.allclose(got, mean, atol=1e-5)
    assert np.max(np.abs(mean - np.asarray(members[0](x, training=False)))) > 1e-3  # the members differ
    # One spatial feature map (the members' maps side by side) before the linear head.
    assert ensemble.get_layer("member_features").output.shape[1:] == (2, 2, 3 * 256)
    with pytest.raises(ValueError, match="at least two members"):
        build_ensemble(members[:1])


def test_a_two_member_run_trains_both_and_the_bundle_runs_as_one_network(synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ensemble"
    config = TrainConfig(
        data=synthetic_data,
        out=out,
        name="toy",
        version="0.4",
        epochs=2,
        image_size=32,
        batch_size=8,
        test_fraction=0.25,
        tta="flip-lr",
        members=2,
        ema=0.9,
        check_images=1,
        verbose=0,
    )
    manifest = train_bundle(config)
    training = manifest.metrics["training"]
    assert [m["seed"] for m in training["members"]] == [42, 43]
    assert all(len(m["history"]) == 2 for m in training["members"])
    assert training["options"]["members"] == 2 and training["options"]["ema"] == 0.9
    assert "moving average of the weights (decay 0.9 per step)" in training["schedule"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "Ensemble of 2 networks" in card and "Member 2 (seed 43)" in card
    runner = InferenceRunner(out)
    x = np.random.default_rng(7).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    output = runner.run(x, heatmaps=True)
    assert output.heatmaps is not None and output.heatmaps.shape[0] == 3
    assert output.features is not None and output.features.shape == (3, 2 * 256)
    # The card's report figures are the runner's: evaluate_model measures the same.
    result = evaluate_bundle(out, synthetic_data, tmp_path / "eval", report_split=True)
    assert result["accuracy"] == pytest.approx(manifest.metrics["report"]["accuracy"])
    assert result["roc_auc"] == pytest.approx(manifest.metrics["report"]["roc_auc"], abs=1e-6)
    # The bfloat16 variant of the joined network builds and stays close.
    half = InferenceRunner(out, precision="bfloat16")
    assert np.max(np.abs(half.predict_arrays(x) - runner.predict_arrays(x))) < 0.05


def test_report_split_evaluation_needs_a_bundle_that_records_one(tmp_path: Path) -> None:
    raw = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    if "report" in raw["metrics"]:
        raw["metrics"].pop("report")
    folder = tmp_path / "old"
    shutil.copytree(DEMO_BUNDLE, folder)
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EvaluationError, match="records no report split"):
        evaluate_bundle(folder, tmp_path, tmp_path / "eval", report_split=True)


# --- weight averaging ------------------------------------------------------------------------


def test_weight_averaging_scores_and_keeps_the_average_and_training_goes_on_from_the_last_step() -> None:
    import keras

    from diagnostics.ml.train import _make_monitor

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    y = np.array([0, 1] * 4)
    monitor = _make_monitor(x, y, patience=5, lr_patience=None, verbose=0, ema=0.9)
    monitor.set_model(model)
    shapes = [w.shape for w in model.get_weights()]
    for step in range(6):  # the weights after each step: 0, 1, ..., 5 everywhere
        model.set_weights([np.full(s, float(step), np.float32) for s in shapes])
        monitor.on_train_batch_end(step)
    monitor.on_epoch_end(0)
    kept = monitor.best_weights
    assert kept is not None
    # Warm-up decays (1 + t) / (10 + t) for t = 1..5, below 0.9: computed by hand.
    expected = 0.0
    for t in range(1, 6):
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * t
    assert all(np.allclose(w, expected) for w in kept) and 0.0 < expected < 5.0
    assert all(np.allclose(w, 5.0) for w in model.get_weights())  # the live weights are back
    monitor.on_train_end()
    assert all(np.allclose(w, expected) for w in model.get_weights())  # the average is what is kept


def test_a_run_without_averaging_keeps_the_last_steps_weights() -> None:
    import keras

    from diagnostics.ml.train import _make_monitor

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    monitor = _make_monitor(x, np.array([0, 1] * 4), patience=5, lr_patience=None, verbose=0)
    monitor.set_model(model)
    model.set_weights([np.full(w.shape, 3.0, np.float32) for w in model.get_weights()])
    monitor.on_train_batch_end(0)
    monitor.on_epoch_end(0)
    assert monitor.best_weights is not None and all(np.allclose(w, 3.0) for w in monitor.best_weights)
