"""Whole-slide benchmark: the slide path's tiles per second against the bare compiled
model call on the same tiles (one run, same process), and the wall time and peak
resident memory of the slide job's core at two slide sizes (each in a fresh process).

    .venv/bin/python bench/bench_slides.py --bundle models/demo-pcam \
        --slide ../shared/data/slides/slide-01.tiff --large /tmp/large-80x60.tiff /tmp/large-160x120.tiff

Large slides come from make_slide.py, e.g.
    python make_slide.py --patches ../shared/data/pcam/train --out /tmp/large-160x120.tiff \
        --grid 160 120 --tumours 4 --allow-repeats --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _open(path: str) -> tuple[Any, float]:
    import openslide

    slide = openslide.OpenSlide(path)
    return slide, float(slide.properties[openslide.PROPERTY_NAME_MPP_X])


def throughput(bundle: str, slide_path: str, batch: int, threads: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    from diagnostics.ml.runner import InferenceRunner
    from diagnostics.ml.slides import analyse, iter_tile_batches, model_mpp, plan_grid, tissue_mask

    runner = InferenceRunner(bundle)
    slide, mpp = _open(slide_path)
    grid = plan_grid(slide, slide_mpp=mpp, model_mpp=model_mpp(runner.manifest.mpp), input_size=runner.input_size)
    tissue = tissue_mask(slide, grid)
    coords = [(int(c), int(r)) for r, c in zip(*np.nonzero(tissue), strict=True)]
    tiles = [b for _, b in iter_tile_batches(slide, grid, coords, batch_size=batch, threads=threads)]
    runner.bare_call(tiles[0])  # trace this batch size once, for both sides
    runner.bare_call(tiles[-1])
    best_bare = best_path = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for b in tiles:
            runner.bare_call(b)
        best_bare = min(best_bare, time.perf_counter() - t)
        t = time.perf_counter()
        analyse(slide, slide_mpp=mpp, model_mpp=model_mpp(runner.manifest.mpp), input_size=runner.input_size,
                labels=runner.labels, predict=runner.predict_tiles, batch_size=batch, threads=threads)  # fmt: skip
        best_path = min(best_path, time.perf_counter() - t)
    n = len(coords)
    return {"tiles": n, "bare_tiles_per_s": n / best_bare, "path_tiles_per_s": n / best_path,
            "ratio": best_bare / best_path}  # fmt: skip


def one_large(bundle: str, slide_path: str, batch: int, threads: int) -> dict[str, Any]:
    """Run in a fresh process: model load + the whole slide job core."""
    from diagnostics.ml.runner import InferenceRunner
    from diagnostics.ml.slides import analyse, model_mpp

    t0 = time.perf_counter()
    runner = InferenceRunner(bundle)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    slide, mpp = _open(slide_path)
    t1 = time.perf_counter()
    a = analyse(slide, slide_mpp=mpp, model_mpp=model_mpp(runner.manifest.mpp), input_size=runner.input_size,
                labels=runner.labels, predict=runner.predict_tiles, batch_size=batch, threads=threads)  # fmt: skip
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size_px": list(slide.dimensions), "tissue_tiles": a.tissue_tiles, "load_s": t1 - t0,
            "analyse_s": t2 - t1, "tiles_per_s": a.tissue_tiles / (t2 - t1),
            "p_positive": 1 - a.slide_probabilities[0], "peak_rss_mb": peak,
            "rss_after_model_mb": rss_model}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/demo-pcam")
    ap.add_argument("--slide", default="../shared/data/slides/slide-01.tiff")
    ap.add_argument("--large", nargs="*", default=[])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one-large", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_large:
        print(json.dumps(one_large(args.bundle, args.one_large, args.batch, args.threads)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    r = throughput(args.bundle, args.slide, args.batch, args.threads, args.repeats)
    print(f"{Path(args.slide).name}: {r['tiles']} tissue tiles, batch {args.batch}, {args.threads} read threads")
    print(f"  bare compiled call on the decoded tiles: {r['bare_tiles_per_s']:.0f} tiles/s")
    print(f"  slide path (tissue mask, threaded reads, model, aggregation): {r['path_tiles_per_s']:.0f} tiles/s")
    print(f"  ratio slide path / bare call: {r['ratio']:.2f}")
    for path in args.large:
        out = subprocess.run(
            [sys.executable, __file__, "--bundle", args.bundle, "--one-large", path, "--batch", str(args.batch),
             "--threads", str(args.threads)], capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        d = json.loads(out)
        print(f"{Path(path).name}: {d['size_px'][0]}x{d['size_px'][1]} px, {d['tissue_tiles']} tissue tiles: "
              f"analyse {d['analyse_s']:.1f} s ({d['tiles_per_s']:.0f} tiles/s), model load {d['load_s']:.1f} s, "
              f"peak RSS {d['peak_rss_mb']:.0f} MB (after model load {d['rss_after_model_mb']:.0f} MB), "
              f"P(positive) {d['p_positive']:.3f}")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
