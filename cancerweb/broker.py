"""The demo's broker: kombu's filesystem transport, with an atomic write.

kombu writes a message file in place (open, lock, write) while a worker polling the
folder may already move and read it: the worker then reads an empty file, fails to
decode it and stops ("Unrecoverable error: JSONDecodeError"), seen in the demo under
load. Writing under a name the worker ignores and renaming it (atomic within one
folder) closes that window. Registered as the "filesystem" transport in celery.py."""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu's own bases disagree
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"  # the worker only picks up names ending in ".<queue>.msg"
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
