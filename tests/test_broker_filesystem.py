"""The demo's filesystem broker writes each message atomically, so a polling worker
never reads a half-written file (which used to stop the demo's worker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

import cancerweb.celery  # noqa: F401 - registers the "filesystem" transport


def test_messages_are_written_atomically_and_partial_files_are_ignored(tmp_path: Path) -> None:
    options = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
        "control_folder": str(tmp_path / "control"),
        "store_processed": False,
    }
    with Connection("filesystem://", transport_options=options) as conn:
        assert type(conn.transport).__module__ == "cancerweb.broker"
        queue = conn.SimpleQueue("inference")
        # A file still being written (as another process would leave it mid-write) is not a message.
        (tmp_path / "1_x.inference.msg.partial").write_bytes(b"")
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)
        queue.put({"job_id": 1})
        assert not [p for p in tmp_path.glob("*.partial") if p.name != "1_x.inference.msg.partial"]
        message = queue.get(timeout=5)
        assert message.payload == {"job_id": 1}
        message.ack()
        queue.close()
