#!/usr/bin/env bash
# The GPU benchmark on a borrowed machine (Python, JAX with CUDA and NumPy there; the
# rest from bench/gpu/wheels, made by fetch_wheels.sh and carried along). Prints the raw
# jitted EfficientNetB0 call beside the worker's ML path (decode ahead, runner with
# Grad-CAM, heat maps behind) at batch 32 and 128. Well under 8 minutes: each figure is
# timed for 8 s, and compiling EfficientNetB0 per batch shape takes seconds on a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
if ! python3 -c "import keras, PIL, h5py" 2>/dev/null; then
  python3 -m pip install --quiet --no-index --no-deps --find-links bench/gpu/wheels $(cat bench/gpu/wheels.txt)
fi
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3
timeout 450 python3 bench/gpu/gpu_bench.py --batches 32,128 --seconds 8 --bfloat16 "$@"
