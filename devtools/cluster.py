"""A local cluster that behaves like several machines: PostgreSQL, Redis and SeaweedFS
on free loopback ports, two web "hosts" (gunicorn, each its own data folder) and two
worker "hosts" that share no folder with anyone: each has its own data, model and
model-cache folder, so a scan or a model bundle reaches a worker only through the
object store, as it would on another machine. One sweeper runs beside the web.

    bin/cluster start [--root var/cluster] [--web 2] [--workers 2] [--users 4]
    bin/cluster status | stop [--root ...]

Used by the cluster smoke test, the load test (bench/loadtest.py) and the backup
drill. Everything listens on 127.0.0.1 only. No Django imports here: Django runs in
the processes this starts (set-up runs `python -m devtools.cluster setup` in one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devtools.seaweed import SeaweedServer, free_ports, new_server

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("CANCERWEB_PG_BIN", "/usr/lib/postgresql/15/bin"))
DB_NAME = "cancerweb"
STATE = "cluster.json"
PASSWORD_LENGTH = 18

# Short recovery deadlines: a killed worker host's jobs go back to the queue within a
# minute, not the production default's six (the load test kills one on purpose).
FAST_RECOVERY = {
    "CELERY_TASK_HARD_TIME_LIMIT": "60",
    "CANCERWEB_JOB_RUNNING_DEADLINE_S": "75",
    "CANCERWEB_JOB_QUEUED_DEADLINE_S": "20",
    "CANCERWEB_JOB_SWEEP_INTERVAL_S": "2",
    "CANCERWEB_JOB_MAX_ATTEMPTS": "5",
    "CANCERWEB_WORKER_HEARTBEAT_S": "5",
    "CANCERWEB_STORAGE_RETRY_DELAY_S": "5",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg(*args: str, log: Path | None = None) -> None:
    """Run a PostgreSQL server tool, as the postgres user when we are root (initdb
    and postgres refuse to run as root)."""
    cmd = ["runuser", "-u", "postgres", "--", *args] if _is_root() else list(args)
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def _wait(predicate: Any, *, timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(interval)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 (loopback only)
            return bool(r.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill_group(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    root: str
    web: int = 2
    workers: int = 2
    users: int = 4
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    seaweed: dict[str, Any] = field(default_factory=dict)
    logins: dict[str, Any] = field(default_factory=dict)

    # --- state ----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return Path(self.root)

    def save(self) -> None:
        target = self.path / STATE
        target.write_text(json.dumps(asdict(self), indent=1))
        target.chmod(0o600)

    @classmethod
    def load(cls, root: str | Path) -> Cluster:
        return cls(**json.loads((Path(root) / STATE).read_text()))

    def store(self) -> SeaweedServer:
        return SeaweedServer(**self.seaweed)

    @property
    def web_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.ports[f'web{i}']}" for i in range(1, self.web + 1)]

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.ports['pg']}/{DB_NAME}"

    # --- environments: what each "host" gets ----------------------------------------
    def env(self, host: str, **extra: str) -> dict[str, str]:
        data = self.path / "hosts" / host
        data.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CANCERWEB_", "DJANGO_", "CELERY_"))}
        env = {
            **base,
            **FAST_RECOVERY,
            "DJANGO_SECRET_KEY": self.secrets["django"],
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "CANCERWEB_HTTPS": "0",
            "CANCERWEB_ENCRYPTION_KEYS": self.secrets["encryption"],
            "CANCERWEB_DATA_DIR": str(data),
            # Nothing of this host is shared: scans and bundles only through the store.
            "CANCERWEB_SCAN_DIR": str(data / "scans-unused"),
            "CANCERWEB_MODEL_DIR": str(data / "models"),
            "CANCERWEB_MODEL_CACHE_DIR": str(data / "model-cache"),
            "DJANGO_STATIC_ROOT": str(self.path / "static"),
            "CANCERWEB_MONITORING_TOKEN": self.secrets["monitoring"],
            **self.store().env(prefix="cluster"),
        }
        (data / "models").mkdir(exist_ok=True)
        env.update(extra)
        return env

    def web_env(self, host: str) -> dict[str, str]:
        return self.env(
            host,
            # The registering host has the bundles; worker hosts fetch them from the store.
            CANCERWEB_MODEL_DIR=str(ROOT / "models"),
            # gthread workers share a pooled connection per thread group (settings.py).
            CANCERWEB_DB_POOL_MAX_SIZE="4",
            # The load test's clients are few and fast; the per-user limits would throttle them.
            CANCERWEB_API_RATE_USER="100000/minute",
            CANCERWEB_API_RATE_TOKEN="100000/minute",  # noqa: S106 (a rate, not a secret)
        )

    # --- start and stop ---------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> int:
        log = (self.path / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.pids[name] = proc.pid
        self.save()
        return proc.pid

    def log(self, name: str) -> str:
        path = self.path / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "logs").mkdir(exist_ok=True)
        names = ["pg", "redis", *(f"web{i}" for i in range(1, self.web + 1))]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.secrets = {
            "django": secrets.token_urlsafe(50),
            "encryption": f"cluster1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            "monitoring": secrets.token_urlsafe(30),
            "password": secrets.token_urlsafe(PASSWORD_LENGTH)[:PASSWORD_LENGTH],
        }
        server = new_server(self.path / "seaweedfs", bucket="cancerweb")
        self.seaweed = asdict(server)
        self.save()
        try:
            self._start_postgres()
            self._start_redis()
            server.start()
            self.seaweed = asdict(server)
            self.save()
            self._setup()
            for i in range(1, self.web + 1):
                self.start_web(i)
            self._spawn("sweeper", [sys.executable, "manage.py", "sweep_jobs", "--loop"], self.env("sweeper"))
            for i in range(1, self.workers + 1):
                self.start_worker(f"worker{i}", wait=False)
            for i in range(1, self.workers + 1):
                self.wait_worker(f"worker{i}")
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self) -> None:
        data, sock = self.path / "pg", self.path / "pg-sock"
        sock.mkdir(exist_ok=True)
        if _is_root():
            shutil.chown(self.path, "postgres")
            shutil.chown(sock, "postgres")
            self.path.chmod(0o755)
        _pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
            "--no-instructions")  # fmt: skip
        self.pg_start()
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-p", str(self.ports["pg"]), "-U", "postgres", DB_NAME],
            check=True, capture_output=True,
        )  # fmt: skip

    def pg_start(self) -> None:
        opts = (
            f"-p {self.ports['pg']} -k {self.path / 'pg-sock'} -c listen_addresses=127.0.0.1 "
            "-c max_connections=120 -c synchronous_commit=off -c shared_buffers=256MB"
        )
        _pg(str(PG_BIN / "pg_ctl"), "-D", str(self.path / "pg"), "-o", opts, "-l", str(self.path / "pg.log"),
            "-w", "-t", "60", "start")  # fmt: skip

    def pg_stop(self, mode: str = "fast") -> None:
        if (self.path / "pg" / "postmaster.pid").exists():
            _pg(str(PG_BIN / "pg_ctl"), "-D", str(self.path / "pg"), "-m", mode, "-w", "-t", "60", "stop")

    def _start_redis(self) -> None:
        cmd = ["redis-server", "--port", str(self.ports["redis"]), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.path)]  # fmt: skip
        self._spawn("redis", cmd, dict(os.environ))
        _wait(lambda: _port_open(self.ports["redis"]), timeout=30, what="redis-server")

    def _manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env or self.web_env("web1"),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def _setup(self) -> None:
        self._manage("migrate", "--noinput", "-v0")
        self._manage("collectstatic", "--noinput", "-v0")
        result = subprocess.run(
            [sys.executable, "-m", "devtools.cluster", "setup", "--root", self.root, "--users", str(self.users)],
            cwd=ROOT, env=self.web_env("web1"), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if result.returncode:
            raise RuntimeError(f"cluster set-up failed:\n{result.stdout}\n{result.stderr}")
        self.logins = json.loads(result.stdout.strip().splitlines()[-1])
        self.save()

    def start_web(self, i: int) -> None:
        name = f"web{i}"
        port = self.ports[name]
        self._spawn(name, [sys.executable, "-m", "gunicorn", "cancerweb.wsgi", "--bind", f"127.0.0.1:{port}",
                           "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--timeout", "120",
                           # Longer than a client's pause between polls (2 s): gunicorn's default
                           # 2 s closes kept-alive connections just as clients reuse them (resets).
                           "--keep-alive", "30",
                           "--access-logfile", str(self.path / "logs" / f"{name}-access.log")],
                    self.web_env(name))  # fmt: skip
        _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/accounts/login/"), timeout=120, what=name)

    def start_worker(self, name: str, *, wait: bool = True) -> None:
        self._spawn(name, [sys.executable, "-m", "celery", "-A", "cancerweb", "worker", "-Q", "inference,default",
                           "-c", "1", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
                           "--loglevel=INFO"], self.env(name))  # fmt: skip
        if wait:
            self.wait_worker(name)

    def wait_worker(self, name: str) -> None:
        start = self.log(name).rfind("celery@")  # the banner of this start

        def ready() -> bool:
            if not _alive(self.pids[name]):
                raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
            return " ready." in self.log(name)[max(start, 0) :]

        _wait(ready, timeout=300, what=name)

    def restart_store(self) -> float:
        """Kill SeaweedFS (SIGKILL) and start it again on the same ports and data;
        returns the seconds it was down. The new pid is saved, so stop() ends it."""
        store = self.store()
        store.stop()
        down = time.monotonic()
        store.start()
        self.seaweed = asdict(store)
        self.save()
        return time.monotonic() - down

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """A host lost at once (SIGKILL to its whole process group) or shut down."""
        pid = self.pids.pop(name, 0)
        if pid:
            _kill_group(pid, sig)
        self.save()

    def stop(self) -> None:
        for name in sorted(self.pids, key=lambda n: (n == "redis", n)):
            self.kill(name, signal.SIGTERM if name.startswith("web") else signal.SIGKILL)
        if self.seaweed:
            self.store().stop()
        try:
            self.pg_stop("fast")
        except (subprocess.CalledProcessError, OSError):
            pass

    def status(self) -> dict[str, str]:
        out = {name: ("up" if _alive(pid) else "DOWN") for name, pid in self.pids.items()}
        out["seaweedfs"] = "up" if self.seaweed and self.store().alive() else "DOWN"
        out["postgresql"] = "up" if _port_open(self.ports.get("pg", 0)) else "DOWN"
        return out


def setup_data(users: int) -> dict[str, Any]:
    """Inside Django (the cluster's web environment): a care unit, clinicians and
    physicians with API tokens, the bundled models registered (so published to the
    object store) and active. Returns the logins as JSON-able data."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cancerweb.settings")
    django.setup()
    from django.conf import settings

    from accounts import services as account_services
    from accounts.models import CareUnit, User
    from accounts.roles import ensure_role_groups
    from diagnostics.services.model_registry import model_register

    ensure_role_groups()
    from django.contrib.auth.models import Group

    password = os.environ.get("CLUSTER_PASSWORD") or secrets.token_urlsafe(PASSWORD_LENGTH)
    unit = CareUnit.objects.filter(name="Cluster unit").first() or account_services.unit_create(
        acting_user=None, name="Cluster unit"
    )
    logins: dict[str, Any] = {"password": password, "clinicians": {}, "physicians": {}}
    for role, count in (("clinician", users), ("physician", max(1, users // 2))):
        for i in range(1, count + 1):
            user = User.objects.create_user(username=f"{role}{i}", password=password, first_name=role.title(),
                                            last_name=str(i))  # fmt: skip
            user.groups.add(Group.objects.get(name=role))
            account_services.unit_member_add(acting_user=None, unit=unit, user=user)
            _, token = account_services.api_token_create(acting_user=None, user=user, name="cluster")
            logins[f"{role}s"][user.username] = token
    admin = User.objects.create_user(username="admin", password=password, is_staff=True)
    admin.groups.add(Group.objects.get(name="admin"))
    logins["admin"] = "admin"
    for bundle in ("demo-pcam", "busi-small-cnn"):
        model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / bundle, activate=True)
    return logins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "status", "setup"])
    parser.add_argument("--root", default=str(ROOT / "var" / "cluster"))
    parser.add_argument("--web", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=4)
    args = parser.parse_args()
    if args.action == "setup":
        os.environ["CLUSTER_PASSWORD"] = Cluster.load(args.root).secrets["password"]
        print(json.dumps(setup_data(args.users)))
        return
    if args.action == "start":
        root = Path(args.root)
        if (root / STATE).exists():
            sys.exit(f"{root} holds a cluster already: bin/cluster stop --root {root} (it removes nothing), "
                     f"then delete the folder")  # fmt: skip
        cluster = Cluster(root=str(root.resolve()), web=args.web, workers=args.workers, users=args.users)
        cluster.start()
        print("cluster up (127.0.0.1 only):")
        for url in cluster.web_urls:
            print(f"  web      {url}/")
        store = cluster.store()
        print(f"  S3       {store.endpoint_url} bucket {store.bucket}")
        print(f"  postgres {cluster.database_url}")
        print(f"  logins   clinician1.. / physician1.. / admin, password {cluster.logins['password']}")
        print(f"  state    {root / STATE} (API tokens, secrets); logs in {root / 'logs'}")
        return
    cluster = Cluster.load(args.root)
    if args.action == "stop":
        cluster.stop()
        print(f"stopped; the data stays in {args.root}")
    else:
        for name, state in cluster.status().items():
            print(f"{name:10} {state}")


if __name__ == "__main__":
    main()
