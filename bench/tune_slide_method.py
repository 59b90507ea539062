"""Choose the slide-level method's parameters on development slides (never on the
shared test slides): run every tile through the model once, then score each candidate
setting of diagnostics.ml.slides.SlideMethod on the same tile probabilities.

    python make_slide.py --patches ../shared/data/pcam/train ...   # development slides
    .venv/bin/python bench/tune_slide_method.py DEV_FOLDER --bundle models/demo-pcam

Prints the best settings by slide-level log-loss (ties: higher Dice), then the top 10.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics.ml.runner import InferenceRunner  # noqa: E402
from diagnostics.ml.slide_eval import metrics, reaggregate, run_folder  # noqa: E402
from diagnostics.ml.slides import SlideMethod, model_mpp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--bundle", default="models/demo-pcam")
    args = ap.parse_args()
    runner = InferenceRunner(args.bundle)
    cases = run_folder(
        args.folder, predict=runner.predict_tiles, model_mpp=model_mpp(runner.manifest.mpp),
        input_size=runner.input_size, labels=runner.labels, method=SlideMethod(),
    )  # fmt: skip
    rows = []
    for radius, threshold, mid, scale in itertools.product(
        (0, 1), (0.4, 0.5, 0.6, 0.7), (1.0, 2.0, 3.0, 4.0, 6.0, 8.0), (0.5, 1.0, 2.0)
    ):
        method = SlideMethod(smoothing_radius=radius, threshold=threshold, mass_mid=mid, mass_scale=scale)
        m = metrics(reaggregate(cases, method))
        nll = -sum(
            math.log(max(1e-6, s["p_positive"] if s["truth"] != "no-metastasis" else 1 - s["p_positive"]))
            for s in m["per_slide"]
        ) / len(m["per_slide"])
        rows.append((nll, -m["dice"], method, m))
    rows.sort(key=lambda r: (round(r[0], 3), r[1]))
    base = metrics(cases)
    print(f"{len(cases)} slides ({base['positive_slides']} positive); without smoothing, threshold 0.5, 'any tile':")
    naive_fp = [s["tiles_above_0.5"] for s in base["per_slide"] if s["truth"] == "no-metastasis"]
    print(f"  tiles with p >= 0.5 on negative slides: {naive_fp}")
    print("nll      dice   acc    auc    sens@1fp sens@4fp  method")
    for nll, _, method, m in rows[:10]:
        print(
            f"{nll:.4f}  {m['dice']:.3f}  {m['slide_accuracy']:.3f}  {m['slide_roc_auc']:.3f}  "
            f"{m['tile_sensitivity_at_1fp']:.3f}    {m['tile_sensitivity_at_4fp']:.3f}     "
            f"r={method.smoothing_radius} t={method.threshold} mid={method.mass_mid} scale={method.mass_scale}"
        )


if __name__ == "__main__":
    main()
