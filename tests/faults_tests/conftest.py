"""A private stack for fault injection, started and killed by the tests alone.

Other people's tests use the shared PostgreSQL (5432) and Redis (6379) at the same
time, so these tests start their own PostgreSQL cluster and redis-server on free
ports, point this process's database connection and Celery publisher at them, and
run real `celery worker` and `sweep_jobs --loop` processes against them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import close_old_connections, connections
from django.test import override_settings

from accounts import services as account_services
from accounts.models import User
from diagnostics.models import ModelVersion
from diagnostics.services.model_registry import model_activate, model_register
from tests.factories import UserFactory
from tests.faults_tests.slow_bundle import make_slow_bundle
from tests.helpers import ROOT, celery_broker, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB_NAME = "cancerweb_faults"

# Seconds per image of the slow bundle the kill tests run (see Stack.use_model). The
# depth is calibrated when the bundle is built, so on a machine whose load drops later an
# image takes less: one image must still outlast the tests' 0.3 s wait for a running job
# with room for their polling (0.8 s calibrated under load once ran in 0.38 s, and the
# test waited in vain), and a batch of four must stay well inside the hard limit.
SLOW_SECONDS_PER_IMAGE = 1.5

# Short deadlines so a lost message or worker is recovered in seconds, not minutes.
RUNNING_DEADLINE_S = 33
WORKER_ENV = {
    "CELERY_TASK_HARD_TIME_LIMIT": "30",
    "CANCERWEB_JOB_RUNNING_DEADLINE_S": str(RUNNING_DEADLINE_S),
    "CANCERWEB_JOB_QUEUED_DEADLINE_S": "6",
    "CANCERWEB_JOB_SWEEP_INTERVAL_S": "1",
    "CANCERWEB_JOB_MAX_ATTEMPTS": "5",
    "CANCERWEB_WORKER_HEARTBEAT_S": "2",
    "CANCERWEB_INFERENCE_BATCH_SIZE": "4",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def _as_postgres(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, **kwargs)


def _wait(predicate: Any, *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(interval)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Stack:
    root: Path
    pg_port: int
    redis_port: int
    scan_dir: Path
    redis_proc: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sweeper: subprocess.Popen[bytes] | None = None
    clinician: User | None = None
    models: dict[str, ModelVersion] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    # --- PostgreSQL ------------------------------------------------------------
    @property
    def pg_data(self) -> Path:
        return self.root / "pg"

    def pg_start(self) -> None:
        opts = (
            f"-p {self.pg_port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=50"
        )
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.pg_data), "-o", opts, "-l", str(self.root / "pg.log"),
                     "-w", "-t", "60", "start")  # fmt: skip

    def pg_stop(self, mode: str = "fast") -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.pg_data), "-m", mode, "-w", "-t", "60", "stop")

    # --- Redis -----------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_start(self) -> None:
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        _wait(up, timeout=30, what="redis-server")

    def redis_kill(self, sig: int) -> None:
        assert self.redis_proc is not None
        self.redis_proc.send_signal(sig)
        self.redis_proc.wait(timeout=30)
        self.redis_proc = None

    # --- workers and sweeper -----------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **WORKER_ENV,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg_port}/{DB_NAME}",
            "CELERY_BROKER_URL": self.broker_url,
            "CANCERWEB_SCAN_DIR": str(self.scan_dir),
            "CANCERWEB_MODEL_DIR": str(self.model_dir),
            **extra,
        }

    def use_model(self, which: str) -> None:
        """Make the demo model ("demo") or the deliberately slow one ("slow") the active
        model of the task, before starting workers: the kill tests need inference that
        lasts long enough to be interrupted."""
        with override_settings(MODEL_DIR=self.model_dir):
            model_activate(acting_user=None, model_version=self.models[which])

    def start_worker(self, *, name: str, wait_ready: bool = True) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cancerweb", "worker", "-Q", "inference,default", "-c", "1",
             "--loglevel=INFO", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=self.env(),
            stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.workers.append(proc)
        if wait_ready:
            start = log.stat().st_size if log.exists() else 0

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{log.read_text()[-3000:]}")
                return "ready." in log.read_text()[start:]

            _wait(ready, timeout=180, what=f"worker {name}", interval=0.3)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """The whole worker: main process and pool children (one process group)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        self.workers.remove(proc)

    def pool_children(self, proc: subprocess.Popen[bytes]) -> list[int]:
        return _children(proc.pid)

    def start_sweeper(self) -> None:
        self.sweeper = subprocess.Popen(
            [sys.executable, "manage.py", "sweep_jobs", "--loop", "--interval", "1"],
            cwd=ROOT, env=self.env(), stdout=(self.root / "sweeper.log").open("a"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop_workers(self) -> None:
        for proc in list(self.workers):
            self.kill_worker(proc, signal.SIGKILL)

    def stop_processes(self) -> None:
        self.stop_workers()
        if self.sweeper is not None:
            os.killpg(self.sweeper.pid, signal.SIGKILL)
            self.sweeper.wait(timeout=60)
            self.sweeper = None
        close_old_connections()


@pytest.fixture(scope="module")
def stack(django_db_blocker: Any) -> Iterator[Stack]:
    for tool in (PG_BIN / "initdb", Path(shutil.which("redis-server") or "/nonexistent")):
        if not tool.exists():
            pytest.fail(f"fault tests need {tool}")  # a missing tool is a failure, not a skip
    root = Path(tempfile.mkdtemp(prefix="cancerweb-faults-"))
    (root / "sock").mkdir()
    scan_dir = root / "scans"
    scan_dir.mkdir()
    shutil.chown(root, "postgres")
    shutil.chown(root / "sock", "postgres")
    root.chmod(0o755)
    s = Stack(root=root, pg_port=free_port(), redis_port=free_port(), scan_dir=scan_dir)
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(s.pg_data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--no-sync", "--no-instructions")  # fmt: skip
    s.pg_start()
    try:
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(s.pg_port), "-U", "postgres", DB_NAME], check=True)
        s.redis_start()
    except BaseException:  # leave no server of ours behind
        s.pg_stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
        raise

    conn = connections["default"]
    saved = dict(conn.settings_dict)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so a SIGTERM to the test run still tears this stack down

    previous_handler = signal.signal(signal.SIGTERM, interrupted)
    # The browser tests' session-wide Playwright (sync API) leaves an event loop set
    # in this thread, and Django then refuses ORM calls; this code is synchronous.
    async_unsafe = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    storages = {
        **settings.STORAGES,
        "scans": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(scan_dir)}},
    }
    with (
        django_db_blocker.unblock(),
        celery_broker(s.broker_url),
        override_settings(SCAN_STORAGE_DIR=scan_dir, STORAGES=storages),
    ):
        try:
            conn.close()
            conn.settings_dict.update(
                {"NAME": DB_NAME, "HOST": "127.0.0.1", "PORT": str(s.pg_port), "USER": "postgres", "PASSWORD": ""}
            )
            call_command("migrate", verbosity=0)
            shutil.copytree(ROOT / "models" / "demo-pcam", s.model_dir / "demo-pcam")
            # About as slow as a large network on this CPU: a batch of 8 takes seconds.
            make_slow_bundle(s.model_dir / "fault-slow", seconds_per_image=SLOW_SECONDS_PER_IMAGE)
            with override_settings(MODEL_DIR=s.model_dir):
                s.models = {
                    "slow": model_register(acting_user=None, bundle_dir="fault-slow"),
                    "demo": model_register(acting_user=None, bundle_dir="demo-pcam", activate=True),
                }
            s.clinician = UserFactory(username="fault-clinician", role="clinician")
            account_services.unit_member_add(
                acting_user=None,
                unit=account_services.unit_create(acting_user=None, name="Fault unit"),
                user=s.clinician,
            )
            s.start_sweeper()
            yield s
        finally:
            s.stop_processes()
            conn.close()
            conn.settings_dict.clear()
            conn.settings_dict.update(saved)
            if s.redis_proc is not None:
                s.redis_kill(signal.SIGKILL)
            try:
                s.pg_stop("immediate")
            except subprocess.CalledProcessError:
                pass
            shutil.rmtree(root, ignore_errors=True)
            signal.signal(signal.SIGTERM, previous_handler)
            if async_unsafe is None:
                os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
            else:
                os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = async_unsafe
