"""The worker's inference path against a bare compiled model call, in one run.

For each batch size B the same N images go through
  * the worker path: `job_run` on queued jobs with INFERENCE_BATCH_SIZE=B: it claims
    B waiting jobs in one statement, reads their bytes from storage, checks their
    SHA-256, decodes (in a thread pool), predicts WITH the Grad-CAM heat maps in one
    compiled call, encodes the maps (palette PNG) and stores Prediction + ReviewItem +
    audit rows for the batch in one transaction, while a helper thread claims and
    decodes the next batch; one call drains the queue;
  * the bare compiled call (`InferenceRunner.bare_call`: logits only, no heat maps) on
    the same images already decoded, B at a time;
  * `model.predict` on the same batches, for comparison.
Beside the ratio, the compiled call's median time per batch inside the worker path and
the bare call's: how much of the gap is the network slowed by the stages running beside
it (on few cores) and how much is time outside the network.
Then (unless --drain 0) 1,000 queued jobs drained by one in-process worker, as the
messages would arrive: images per second and p50 / p95 job latency (queue wait plus
service, from the moment all were queued; and claim -> stored), beside the bare call's
images per second at that batch size. Then (unless --idle 0, needs Redis) a real
`celery worker` process at idle: single-image uploads one after another, upload ->
"awaiting review" p50 / p95, beside one image's model time + 250 ms (the goal).
Prints the machine and the load average before and after.

    .venv/bin/python bench/bench_inference.py [--bundle models/demo-pcam] [--images 64]
        [--batches 1,8,32] [--db postgres|sqlite] [--profile] [--drain 1000]
        [--drain-batch 32] [--idle 20] [--broker redis://127.0.0.1:6379/13]

For EfficientNetB0 at 224 px, build a random-weights bundle first with
bench/make_random_bundle.py and pass it as --bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _configure(db: str, data_dir: Path, *, broker: str) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "cancerweb.settings"
    os.environ["DJANGO_SECRET_KEY"] = "bench-only-secret-key-0123456789abcdefghijkl"  # noqa: S105
    os.environ["DJANGO_ALLOWED_HOSTS"] = "localhost"
    os.environ["CANCERWEB_DATA_DIR"] = str(data_dir)
    # memory:// accepts and drops (enqueueing is not what the batch rows measure); the
    # idle row needs a real broker for its worker process.
    os.environ["CELERY_BROKER_URL"] = broker
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


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "models" / "demo-pcam"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one more round of the worker path at the last batch size"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--drain", type=int, default=1000, help="queued jobs drained by one worker (0: skip)")
    parser.add_argument("--drain-batch", type=int, default=32)
    parser.add_argument("--idle", type=int, default=20, help="single uploads through a real worker (0: skip)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13", help="a Redis database the bench may flush")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="cancerweb-bench-"))
    # Only bundles inside the model folder can be registered: make it the bundle's parent.
    os.environ["CANCERWEB_MODEL_DIR"] = str(Path(args.bundle).resolve().parent)
    dbname = _configure(args.db, tmp, broker=args.broker if args.idle else "memory://")
    try:
        run(args, batches, tmp)
    finally:
        if dbname:
            from django.db import connections

            connections.close_all()
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", dbname], check=False)


def _queue_jobs(user: object, images: list[tuple[str, bytes]], ref: str) -> list[int]:
    from django.conf import settings

    from diagnostics.models import InferenceJob
    from diagnostics.services.cases import IncomingFile, case_create, scans_upload

    files = [IncomingFile(name=name, data=data) for name, data in images]
    cap = settings.UPLOAD_MAX_FILES  # one upload takes at most this many files
    case = case_create(acting_user=user, patient_ref=ref, body_site="lymph node", files=files[:cap])  # type: ignore[arg-type]
    for start in range(cap, len(files), cap):
        scans_upload(acting_user=user, case=case, files=files[start : start + cap])  # type: ignore[arg-type]
    return list(InferenceJob.objects.filter(scan__case=case).order_by("created_at", "id").values_list("id", flat=True))


def run(args: argparse.Namespace, batches: list[int], tmp: Path) -> None:
    import django

    django.setup()
    import keras
    import numpy as np
    from django.conf import settings
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import transaction

    from accounts.models import User
    from diagnostics.inference import runner_for
    from diagnostics.models import InferenceJob
    from diagnostics.services.jobs import job_run
    from diagnostics.services.model_registry import model_register

    call_command("migrate", verbosity=0)
    user = User.objects.create_user(username="bench", password="bench-password-123456")  # noqa: S106
    user.groups.add(Group.objects.get(name="clinician"))
    from accounts import services as account_services

    unit = account_services.unit_create(acting_user=None, name="Bench unit")
    account_services.unit_member_add(acting_user=None, unit=unit, user=user)
    model_version = model_register(acting_user=None, bundle_dir=Path(args.bundle).resolve(), activate=True)
    runner = runner_for(model_version)
    images = _images(args.images)
    arrays = np.stack([runner.preprocess(data) for _, data in images])

    print(f"machine: {platform.node()} · {_cpu()} · {os.cpu_count()} cores · {platform.platform()}")
    print(f"{_load()} (start)")
    print(
        f"python {platform.python_version()} · keras {keras.__version__} on {runner.backend} ({runner.device}) · "
        f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
    )
    print(
        f"model: {model_version} ({model_version.name}), input {runner.input_size}px, "
        f"{len(images)} images, {args.rounds} rounds, median shown"
    )
    print()
    print(
        f"{'batch':>5}  {'worker img/s':>12}  {'bare img/s':>10}  {'predict img/s':>13}  {'worker/bare':>11}"
        f"  {'net in worker ms':>16}  {'bare ms':>7}"
    )
    # The worker's compiled call (with heat maps), timed where it runs: `runner_for` hands
    # the worker this same runner. Split of the ratio: the network slowed by what runs
    # beside it (this column against the bare call's time per batch), and the rest.
    in_worker: list[float] = []
    full_call = runner._full

    def timed_full(x: object) -> object:
        t0 = time.perf_counter()
        out = full_call(x)
        in_worker.append(time.perf_counter() - t0)
        return out

    runner._full = timed_full
    bare_at: dict[int, float] = {}
    for batch in batches:
        settings.INFERENCE_BATCH_SIZE = batch
        worker_rates, bare_rates, predict_rates, net_ms, bare_ms = [], [], [], [], []
        extra = 1 if args.profile and batch == batches[-1] else 0
        for round_no in range(args.rounds + 1 + extra):  # round 0 warms up (tracing this batch shape)
            job_ids = _queue_jobs(user, images, f"BENCH-{batch}-{round_no}")
            profiler = None
            if args.profile and batch == batches[-1] and round_no == args.rounds + 1:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            in_worker.clear()
            t0 = time.perf_counter()
            # Profiled, the round runs inside one transaction: the worker path then keeps
            # every stage in this thread, where cProfile sees it (not timed as a row).
            with transaction.atomic() if profiler is not None else contextlib.nullcontext():
                for job_id in job_ids:  # each job's message; the first drains the queue, the rest are no-ops
                    job_run(job_id=job_id)
            worker_s = time.perf_counter() - t0
            if profiler is not None:
                import pstats

                profiler.disable()
                stats = pstats.Stats(profiler).sort_stats("cumulative")
                stats.print_stats(25)
                if os.environ.get("BENCH_CALLEES"):
                    stats.print_callees(os.environ["BENCH_CALLEES"])
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
            if round_no and profiler is None:
                worker_rates.append(len(job_ids) / worker_s)
                bare_rates.append(len(arrays) / bare_s)
                predict_rates.append(len(arrays) / predict_s)
                net_ms.append(statistics.median(in_worker) * 1000)
                bare_ms.append(bare_s * 1000 / -(-len(arrays) // batch))
        w, b, p, n, m = (statistics.median(r) for r in (worker_rates, bare_rates, predict_rates, net_ms, bare_ms))
        bare_at[batch] = b
        print(f"{batch:>5}  {w:>12.1f}  {b:>10.1f}  {p:>13.1f}  {w / b:>11.2f}  {n:>16.1f}  {m:>7.1f}")
    runner._full = full_call  # the drain row measures the worker path as it is
    print(f"{_load()} (after the batch rows)")

    if args.drain:
        drain(args, user, runner)
    if args.idle:
        idle(args, user, runner, tmp)
    print(f"{_load()} (end)")


def drain(args: argparse.Namespace, user: object, runner: object) -> None:
    import numpy as np
    from django.conf import settings

    from diagnostics.models import InferenceJob
    from diagnostics.services.jobs import job_run

    batch = args.drain_batch
    settings.INFERENCE_BATCH_SIZE = batch
    images = _images(args.drain)
    job_ids = _queue_jobs(user, images, "BENCH-DRAIN")
    arrays = np.stack([runner.preprocess(data) for _, data in images[: max(batch * 4, 64)]])  # type: ignore[attr-defined]
    runner.bare_call(arrays[:batch])  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for start in range(0, len(arrays), batch):
        runner.bare_call(arrays[start : start + batch])  # type: ignore[attr-defined]
    bare = len(arrays) / (time.perf_counter() - t0)
    from django.utils import timezone

    queued_at = timezone.now()
    t0 = time.perf_counter()
    for job_id in job_ids:  # the messages, in order, to one worker
        job_run(job_id=job_id)
    wall = time.perf_counter() - t0
    rows = list(
        InferenceJob.objects.filter(id__in=job_ids).values_list("status", "started_at", "finished_at", "attempts")
    )
    assert all(r[0] == InferenceJob.Status.SUCCEEDED and r[3] == 1 for r in rows), "a drained job did not succeed once"
    in_system = [(r[2] - queued_at).total_seconds() for r in rows if r[2] is not None]
    service = [(r[2] - r[1]).total_seconds() for r in rows if r[1] is not None and r[2] is not None]
    print()
    print(f"drain: {len(job_ids)} queued jobs, one in-process worker, batch {batch}:")
    print(
        f"  {len(job_ids) / wall:.1f} img/s ({wall:.1f} s); bare compiled call at batch {batch}: {bare:.1f} img/s "
        f"(worker/bare {len(job_ids) / wall / bare:.2f})"
    )
    print(
        f"  job latency from all queued to stored: p50 {_pct(in_system, 0.5):.2f} s, p95 {_pct(in_system, 0.95):.2f} s;"
        f" claim -> stored: p50 {_pct(service, 0.5) * 1000:.0f} ms, p95 {_pct(service, 0.95) * 1000:.0f} ms"
    )


def idle(args: argparse.Namespace, user: object, runner: object, tmp: Path) -> None:
    """A real worker process on Redis, idle: one single-image upload at a time."""
    import numpy as np
    import redis
    from django.conf import settings
    from django.db import connection

    from diagnostics.models import ReviewItem
    from diagnostics.services.cases import IncomingFile, case_create

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # the batch rows' messages: jobs long done
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        if db["ENGINE"].endswith("postgresql")
        else os.environ["DATABASE_URL"],
        "CANCERWEB_INFERENCE_BATCH_SIZE": "8",
    }
    log_path = tmp / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cancerweb", "worker", "-Q", "inference", "-c", "1",
             "--loglevel=INFO", "-n", f"bench-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while "ready." not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            images = _images(args.idle + 2)[-(args.idle + 2) :]
            one = np.stack([runner.preprocess(images[0][1])])  # type: ignore[attr-defined]
            model_ms = []
            for _ in range(20):
                t0 = time.perf_counter()
                runner.predict_with_heatmaps(one)  # type: ignore[attr-defined]
                model_ms.append((time.perf_counter() - t0) * 1000)
            latencies = []
            for i, (name, data) in enumerate(images):
                t0 = time.perf_counter()
                case = case_create(
                    acting_user=user,  # type: ignore[arg-type]
                    patient_ref=f"BENCH-IDLE-{i}",
                    body_site="lymph node",
                    files=[IncomingFile(name=name, data=data)],
                )
                while not ReviewItem.objects.filter(prediction__scan__case=case).exists():
                    if time.perf_counter() - t0 > 60:
                        raise RuntimeError("an idle upload was not analysed within 60 s")
                    time.sleep(0.005)
                if i >= 2:  # the first two warm the worker's connection and call
                    latencies.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.3)  # idle between uploads
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    model = statistics.median(model_ms)
    p50 = _pct(latencies, 0.5)
    print()
    print(f"idle: {len(latencies)} single-image uploads through a real celery worker (Redis, -c 1):")
    print(
        f"  upload -> awaiting review p50 {p50:.0f} ms, p95 {_pct(latencies, 0.95):.0f} ms; one image's model time "
        f"(with heat map) {model:.0f} ms; goal <= {model + 250:.0f} ms: {'met' if p50 <= model + 250 else 'not met'}"
    )


if __name__ == "__main__":
    main()
