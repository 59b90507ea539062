"""The worker's inference path against a bare compiled model call, in one run.

For each batch size B the same N images go through
  * the worker path: `job_run` on queued jobs, which claims B waiting jobs,
    reads their bytes from storage, checks their SHA-256, decodes and preprocesses
    (in a thread pool), predicts WITH the Grad-CAM heat maps in one compiled call,
    encodes and stores the heat maps and stores Prediction + ReviewItem + audit rows
    for the batch in one transaction;
  * the bare compiled call (`InferenceRunner.bare_call`) on the same images already
    decoded, B at a time;
  * `model.predict` on the same batches, for comparison.
It prints images per second for each and the ratio worker / bare, plus the machine.

    .venv/bin/python bench/bench_inference.py [--bundle models/demo-pcam] [--images 64]
        [--batches 1,8,32] [--db postgres|sqlite] [--profile]

For EfficientNetB0 at 224 px, build a random-weights bundle first with
bench/make_random_bundle.py and pass it as --bundle.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diagnostics.services.cases import IncomingFile, case_create, scans_upload
from diagnostics.services.jobs import job_run
from diagnostics.services.model_registry import model_register

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _configure(db: str, data_dir: Path) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "cancerweb.settings"
    os.environ["DJANGO_SECRET_KEY"] = "bench-only-secret-key-0123456789abcdefghijkl"  # noqa: S105
    os.environ["DJANGO_ALLOWED_HOSTS"] = "localhost"
    os.environ["CANCERWEB_DATA_DIR"] = str(data_dir)
    # Enqueueing is not what is measured; the in-memory transport accepts and drops.
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ.pop("CANCERWEB_DEMO", None)
    from cancerweb.env import generate_key_entry

    os.environ["CANCERWEB_ENCRYPTION_KEYS"] = generate_key_entry("bench")
    if db == "postgres":
        name = f"cancerweb_bench_{os.getpid()}"
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
        return name
    os.environ["DATABASE_URL"] = f"sqlite:///{data_dir / 'bench.sqlite3'}"
    return ""


def _images(count: int) -> list[tuple[str, bytes]]:
    folder = ROOT.parent / "shared" / "data" / "pcam" / "valid"
    files = sorted(folder.glob("*/*.jpg")) if folder.exists() else sorted((ROOT / "samples").glob("*.jpg"))
    files = files[:: max(1, len(files) // count)][:count]
    out = [(f.name, f.read_bytes()) for f in files]
    while len(out) < count:  # samples/ only: vary bytes so each upload is a new scan
        name, data = out[len(out) % len(files)]
        out.append((f"{len(out)}-{name}", data + len(out).to_bytes(4, "big")))
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "models" / "demo-pcam"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker path at the last batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="cancerweb-bench-"))
    dbname = _configure(args.db, tmp)
    try:
        run(args, batches, tmp)
    finally:
        if dbname:
            from django.db import connections

            connections.close_all()
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", dbname], check=False)


def run(args: argparse.Namespace, batches: list[int], tmp: Path) -> None:
    import django

    django.setup()
    import keras
    import numpy as np
    import tensorflow as tf
    from django.conf import settings
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from accounts.models import User
    from diagnostics.inference import runner_for
    from diagnostics.models import InferenceJob

    call_command("migrate", verbosity=0)
    user = User.objects.create_user(username="bench", password="bench-password-123456")  # noqa: S106
    user.groups.add(Group.objects.get(name="clinician"))
    from accounts import services as account_services

    unit = account_services.unit_create(acting_user=None, name="Bench unit")
    account_services.unit_member_add(acting_user=None, unit=unit, user=user)
    model_version = model_register(acting_user=None, bundle_dir=args.bundle, activate=True)
    runner = runner_for(model_version)
    images = _images(args.images)
    arrays = np.stack([runner.preprocess(data) for _, data in images])

    print(f"machine: {platform.node()} · {_cpu()} · {os.cpu_count()} cores · {platform.platform()}")
    print(
        f"python {platform.python_version()} · tensorflow {tf.__version__} · keras {keras.__version__} · "
        f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
    )
    print(
        f"model: {model_version} ({model_version.name}), input {runner.input_size}px, "
        f"{len(images)} images, {args.rounds} rounds, median shown"
    )
    print()
    print(f"{'batch':>5}  {'worker img/s':>12}  {'bare img/s':>10}  {'predict img/s':>13}  {'worker/bare':>11}")
    for batch in batches:
        settings.INFERENCE_BATCH_SIZE = batch
        worker_rates, bare_rates, predict_rates = [], [], []
        for round_no in range(args.rounds + 1):  # round 0 warms up (tracing this batch shape)
            files = [IncomingFile(name=name, data=data) for name, data in images]
            cap = settings.UPLOAD_MAX_FILES  # one upload takes at most this many files
            case = case_create(
                acting_user=user, patient_ref=f"BENCH-{batch}-{round_no}", body_site="lymph node", files=files[:cap]
            )
            for start in range(cap, len(files), cap):
                scans_upload(acting_user=user, case=case, files=files[start : start + cap])
            job_ids = list(
                InferenceJob.objects.filter(scan__case=case).order_by("created_at", "id").values_list("id", flat=True)
            )
            profiler = None
            if args.profile and batch == batches[-1] and round_no == args.rounds:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            t0 = time.perf_counter()
            for start in range(0, len(job_ids), batch):
                job_run(job_id=job_ids[start])
            worker_s = time.perf_counter() - t0
            if profiler is not None:
                import pstats

                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            done = InferenceJob.objects.filter(id__in=job_ids, status=InferenceJob.Status.SUCCEEDED).count()
            assert done == len(job_ids), f"only {done} of {len(job_ids)} jobs succeeded"

            t0 = time.perf_counter()
            for start in range(0, len(arrays), batch):
                runner.bare_call(arrays[start : start + batch])
            bare_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            for start in range(0, len(arrays), batch):
                runner._model.predict(arrays[start : start + batch], verbose=0)
            predict_s = time.perf_counter() - t0
            if round_no:
                worker_rates.append(len(job_ids) / worker_s)
                bare_rates.append(len(arrays) / bare_s)
                predict_rates.append(len(arrays) / predict_s)
        w, b, p = (statistics.median(r) for r in (worker_rates, bare_rates, predict_rates))
        print(f"{batch:>5}  {w:>12.1f}  {b:>10.1f}  {p:>13.1f}  {w / b:>11.2f}")


if __name__ == "__main__":
    main()
