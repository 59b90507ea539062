"""Decide each hostile file in its own forked child, under an address-space cap
(RLIMIT_AS) and a 10 s alarm, and report outcome, time and peak memory as JSON lines.

Run by test_hostile_corpus in a fresh interpreter: ``python -m
tests.diagnostics_tests.hostile_probe MANIFEST MAX_BYTES MAX_PIXELS CAP_MIB``. The
validator imports no Django, so the children run exactly the upload's decision code.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

DECISION_LIMIT_S = 10


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _vm_bytes() -> int:
    return _status_kb("VmSize") * 1024


def _decide(data: bytes, filename: str, max_bytes: int, max_pixels: int, cap: int, out: int) -> None:
    from diagnostics.intake.validation import UploadRejected, validate_image

    limit = _vm_bytes() + cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.alarm(DECISION_LIMIT_S)
    try:
        validate_image(data=data, filename=filename, max_bytes=max_bytes, max_pixels=max_pixels)
        result = {"outcome": "accepted"}
    except UploadRejected as exc:
        result = {"outcome": "refused", "code": exc.code, "message": exc.message}
    except BaseException as exc:  # noqa: BLE001 - anything else is what we are looking for
        result = {"outcome": "crash", "error": type(exc).__name__}
    os.write(out, json.dumps(result).encode())


def main() -> None:
    manifest_path, max_bytes, max_pixels, cap_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # Import everything a decision needs before forking, so children only decide.
    import diagnostics.intake.dicom  # noqa: F401
    import diagnostics.intake.validation  # noqa: F401

    cap = cap_mib * 1024 * 1024
    # VmRSS, not ru_maxrss: Linux carries the maximum across exec, so it would report the parent test process.
    baseline_kb = _status_kb("VmRSS")
    print(json.dumps({"baseline_rss_kb": baseline_kb}), flush=True)
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    for label, filename, path in manifest:
        with open(path, "rb") as fh:
            data = fh.read()
        read_end, write_end = os.pipe()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                _decide(data, filename, max_bytes, max_pixels, cap, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - started
        if chunks:
            result = json.loads(b"".join(chunks))
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
            result = {"outcome": "crash", "error": f"no decision within {DECISION_LIMIT_S} s"}
        else:
            result = {"outcome": "crash", "error": f"child died (status {status})"}
        result.update(label=label, seconds=round(elapsed, 4), max_rss_kb=usage.ru_maxrss)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
