"""The GPU worker's requirements stay the runtime requirements, less TensorFlow, plus JAX."""

from __future__ import annotations

from tests.helpers import ROOT


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            package, _, version = line.partition("==")
            assert version, f"{name}: {line} is not pinned with =="
            pins[package.split("[", 1)[0].lower()] = version
    return pins


def test_gpu_requirements_are_the_runtime_pins_without_tensorflow_plus_jax() -> None:
    runtime, gpu, dev = _pins("requirements.txt"), _pins("requirements-gpu.txt"), _pins("requirements-dev.txt")
    assert "tensorflow-cpu" in runtime and "tensorflow-cpu" not in gpu
    assert {k: v for k, v in runtime.items() if k != "tensorflow-cpu"} == {
        k: v for k, v in gpu.items() if k not in ("jax", "jaxlib")
    }
    # The tests run the JAX backend on the same JAX as the GPU hosts.
    assert gpu["jax"] == dev["jax"] and gpu["jaxlib"] == dev["jaxlib"]
