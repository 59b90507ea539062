#!/usr/bin/env bash
# Run HERE (the development machine, with its package index) before borrowing a GPU
# machine: downloads the wheels run.sh installs there (Keras and what it needs beyond
# JAX and NumPy, Pillow), for the Python versions a borrowed machine may have, into
# bench/gpu/wheels/ (git-ignored; carry it: run(carry=["bench/gpu/wheels"])).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
for py in 3.10 3.11 3.12 3.13; do
  # --no-deps: NumPy and ml_dtypes come with JAX on that machine; the rest is listed.
  ../../.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --dest wheels \
    $(cat wheels.txt) || echo "no complete wheel set for Python $py" >&2
done
du -sh wheels
