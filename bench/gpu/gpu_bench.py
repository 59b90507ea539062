"""The GPU worker's ML path against the raw jitted call, EfficientNetB0 at 224 px.

Needs only Python, JAX, NumPy, Keras and Pillow (no Django, no database, no TensorFlow):
what a borrowed GPU machine has plus the wheels `run.sh` installs. For each batch size:
  * raw: `jax.jit` over `model.stateless_call` on a batch already on the device;
  * runner: `InferenceRunner.run` (host array in, probabilities and Grad-CAM maps out,
    the worker's compiled call) on decoded images;
  * worker ML path: JPEG bytes decoded in threads one batch ahead of the network (as
    the worker's decode-ahead does), the runner, and the heat maps encoded as PNG in a
    store-behind thread: images per second, and its ratio to raw (goal >= 0.70).
No database rows are written here; the CPU benchmark (bench_inference.py) measures those.

    KERAS_BACKEND=jax python bench/gpu/gpu_bench.py [--batches 32,128] [--seconds 8]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _bundle(size: int) -> Path:
    import keras

    from diagnostics.ml.bundle import Manifest, sha256_file, write_manifest
    from diagnostics.ml.models import build_efficientnetb0
    from diagnostics.ml.preprocess import PREPROCESSING_ID

    out = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    keras.utils.set_random_seed(0)
    build_efficientnetb0(size, 2).save(out / "model.keras")
    write_manifest(
        out,
        Manifest(
            name="bench-efficientnetb0", version=f"random-{size}", task="benchmark only", labels=["a", "b"],
            input_size=size, preprocessing=PREPROCESSING_ID, temperature=1.0, uncertain_below=0.6,
            metrics={}, data_summary={}, model_file="model.keras", model_sha256=sha256_file(out / "model.keras"),
            library_versions={},
        ),
    )  # fmt: skip
    return out


def _jpegs(n: int, side: int = 320) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue() + i.to_bytes(4, "big"))
    return out


def _rate(fn: Callable[[], object], images_per_call: int, seconds: float) -> float:
    fn()  # compile / warm
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or calls < 3:
        fn()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per figure")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--decode-threads", type=int, default=8)
    parser.add_argument("--bfloat16", action="store_true", help="also the runner in bfloat16, and its drift")
    args = parser.parse_args()
    import jax
    import keras

    from diagnostics.ml.heatmap import heatmap_png
    from diagnostics.ml.preprocess import decode_rgb
    from diagnostics.ml.runner import InferenceRunner, precision_drift

    t0 = time.perf_counter()
    bundle = _bundle(args.size)
    runner = InferenceRunner(bundle)
    print(f"machine: {platform.node()} · {os.cpu_count()} CPUs · load average {os.getloadavg()}")
    print(f"jax {jax.__version__} · keras {keras.__version__} on {runner.backend} · device {runner.device}")
    print(f"EfficientNetB0 {args.size}px random weights; bundle built and loaded in {time.perf_counter() - t0:.1f} s")
    model = runner._model
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    raw = jax.jit(lambda a, b, x: model.stateless_call(a, b, x, training=False)[0])
    batches = [int(b) for b in args.batches.split(",")]
    jpegs = _jpegs(max(batches) * 4)
    pool = ThreadPoolExecutor(args.decode_threads)
    behind = ThreadPoolExecutor(1)
    heat_px = 64
    print()
    print(f"{'batch':>5}  {'raw jit img/s':>13}  {'runner img/s':>12}  {'worker ML path img/s':>20}  {'path/raw':>8}")
    for batch in batches:
        decoded = np.stack([decode_rgb(j, size=args.size) for j in jpegs[:batch]])
        x_dev = jax.device_put(decoded.astype(np.float32))
        raw_rate = _rate(lambda: raw(tv, ntv, x_dev).block_until_ready(), batch, args.seconds)  # noqa: B023
        runner_rate = _rate(lambda: runner.run(decoded, heatmaps=True), batch, args.seconds)  # noqa: B023
        chunks = [jpegs[i : i + batch] for i in range(0, len(jpegs), batch)]

        def decode(chunk: list[bytes]) -> np.ndarray:
            return np.stack(list(pool.map(lambda b: decode_rgb(b, size=args.size), chunk)))

        def encode(cams: np.ndarray | None) -> list[bytes]:
            return [heatmap_png(c, size=heat_px) for c in (cams if cams is not None else [])]

        def path(chunks: list[list[bytes]] = chunks) -> None:
            behind_future: Future[list[bytes]] | None = None
            ahead_pool = ThreadPoolExecutor(1)
            ahead = ahead_pool.submit(decode, chunks[0])
            for k in range(len(chunks)):
                arr = ahead.result()
                if k + 1 < len(chunks):
                    ahead = ahead_pool.submit(decode, chunks[k + 1])
                out = runner.run(arr, heatmaps=True)
                if behind_future is not None:
                    behind_future.result()
                behind_future = behind.submit(encode, out.heatmaps)
            if behind_future is not None:
                behind_future.result()
            ahead_pool.shutdown()

        path_rate = _rate(path, len(jpegs), args.seconds)
        line = f"{batch:>5}  {raw_rate:>13.1f}  {runner_rate:>12.1f}  {path_rate:>20.1f}  {path_rate / raw_rate:>8.2f}"
        print(line, flush=True)
    if args.bfloat16:
        drift = precision_drift(bundle, reference=runner)
        half = InferenceRunner(bundle, precision="bfloat16")
        batch = batches[-1]
        decoded = np.stack([decode_rgb(j, size=args.size) for j in jpegs[:batch]])
        rate = _rate(lambda: half.run(decoded, heatmaps=True), batch, args.seconds)
        print(f"bfloat16 runner at batch {batch}: {rate:.1f} img/s; drift on the check images {drift:.4f}")
    print(f"total {time.perf_counter() - t0:.0f} s · load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
