"""Start a throw-away Orthanc PACS with its DICOMweb plugin on free loopback ports
(tests, trying the integration by hand). No Django imports.

Orthanc and the plugin come from Debian (`orthanc`, `orthanc-dicomweb`; bin/test installs
them when missing), so the PACS in the tests is the real thing, not a mock. Each server
gets its own storage folder, HTTP and DICOM ports and a generated configuration; the
HTTP API needs no login because it listens on 127.0.0.1 only.

    python -m devtools.orthanc start --dir /tmp/pacs [--aet CANCERWEB=127.0.0.1:11112]   # prints export lines
    python -m devtools.orthanc stop --dir /tmp/pacs
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devtools.processes import pid_alive, start_until_ready, stop_group
from devtools.seaweed import free_ports

STATE_FILE = "orthanc.json"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()), None
    )
    if not found:
        raise RuntimeError("no Orthanc binary: apt-get install orthanc orthanc-dicomweb")
    return found


def dicomweb_plugin() -> str:
    for folder in PLUGIN_DIRS:
        path = Path(folder) / DICOMWEB_PLUGIN
        if path.exists():
            return str(path)
    raise RuntimeError("no Orthanc DICOMweb plugin: apt-get install orthanc-dicomweb")


@dataclass
class OrthancServer:
    root: str
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"
    # Remote DICOM nodes Orthanc may send to: AE title -> (host, port).
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def save(self) -> None:
        Path(self.root, STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, root: str | Path) -> OrthancServer:
        return cls(**json.loads(Path(root, STATE_FILE).read_text()))

    def config(self) -> dict[str, Any]:
        return {
            "Name": "CancerWeb test PACS",
            "StorageDirectory": str(Path(self.root) / "storage"),
            "IndexDirectory": str(Path(self.root) / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": {aet: list(node) for aet, node in self.modalities.items()},
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
            "StableAge": 1,
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpTimeout": 30,
        }

    def start(self, *, timeout: float = 60.0) -> None:
        (Path(self.root) / "storage").mkdir(parents=True, exist_ok=True)
        config = Path(self.root) / "orthanc-config.json"
        config.write_text(json.dumps(self.config(), indent=1))
        self.pid = start_until_ready(
            [orthanc_binary(), "--no-jobs", str(config)],
            log_path=Path(self.root) / "orthanc.log",
            ready=self.ready,
            name="Orthanc",
            timeout=timeout,
            on_timeout=lambda pid: stop_group(pid, signal.SIGTERM),
        )
        self.save()

    def ready(self) -> bool:
        """The REST API answers and the DICOMweb plugin is loaded."""
        try:
            with urllib.request.urlopen(f"{self.dicomweb_url}/studies", timeout=2) as r:  # noqa: S310
                return r.status == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:
        """Orthanc's own REST API (tests: count, delete, inspect)."""
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            raw = r.read()
        return json.loads(raw) if raw else None

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one PS3.10 file in the PACS (what a modality's push amounts to)."""
        return dict(self.rest("POST", "/instances", data))

    def clear(self) -> None:
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, *, timeout: float = 30.0) -> None:
        """SIGTERM: Orthanc closes its index cleanly, so a restart finds what it stored."""
        stop_group(self.pid, signal.SIGTERM, timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()


def new_server(root: str | Path, *, modalities: dict[str, tuple[str, int]] | None = None) -> OrthancServer:
    http_port, dicom_port = free_ports(2)
    return OrthancServer(
        root=str(root),
        http_port=http_port,
        dicom_port=dicom_port,
        modalities={aet: [aet, host, port] for aet, (host, port) in (modalities or {}).items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, help="throw-away folder for the server's storage, log and state")
    parser.add_argument("--aet", action="append", default=[], help="a DICOM node Orthanc may send to: AET=host:port")
    args = parser.parse_args()
    if args.action == "start":
        modalities = {}
        for entry in args.aet:
            aet, _, address = entry.partition("=")
            host, _, port = address.rpartition(":")
            modalities[aet] = (host, int(port))
        server = new_server(args.dir, modalities=modalities)
        server.start()
        print(f"export CANCERWEB_TEST_ORTHANC_URL={server.url}")
        print(f"export CANCERWEB_TEST_ORTHANC_DICOM_PORT={server.dicom_port}")
        print(f"export CANCERWEB_TEST_ORTHANC_PID={server.pid}")
    else:
        OrthancServer.load(args.dir).stop()


if __name__ == "__main__":
    main()
