"""The tile server's open slides, per web process: OpenSlide handles and their Deep Zoom
generators, kept while they are being viewed and closed after SLIDE_CACHE_IDLE_S.

Opening a slide costs a local copy (decrypting its chunks, once, into the bounded cache)
and an OpenSlide open; a viewer asks for hundreds of tiles, so the handle is reused.
Each open handle holds a shared lock on its cached copy, so no process evicts it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from diagnostics.intake import slide_cache

MAX_OPEN = 8
TILE_SIZE = 254  # + 1 px overlap each side = 256, the slides' own tile size
OVERLAP = 1

_lock = threading.Lock()
_open: OrderedDict[str, _Handle] = OrderedDict()


@dataclass
class _Handle:
    slide: Any
    deepzoom: Any
    fd: int
    path: Path
    last: float

    def close(self) -> None:
        self.slide.close()
        slide_cache.release(self.fd)


def _close_idle(now: float) -> None:
    for sha in [s for s, h in _open.items() if now - h.last > settings.SLIDE_CACHE_IDLE_S]:
        _open.pop(sha).close()
    while len(_open) > MAX_OPEN:
        _open.popitem(last=False)[1].close()


def open_slide(scan: Any) -> _Handle:
    """The open handle of a stored slide (a Scan of kind slide), opened if needed."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    now = time.monotonic()
    with _lock:
        _close_idle(now)
        handle = _open.get(scan.sha256)
        if handle is not None:
            if now - handle.last > 60:
                slide_cache.touch(handle.path)  # the cache's idle rule sees it in use
            handle.last = now
            _open.move_to_end(scan.sha256)
            return handle
        path, fd = slide_cache.hold(slide_cache.StoredSlide.of(scan))
        try:
            slide = openslide.OpenSlide(str(path))
        except Exception:
            slide_cache.release(fd)
            raise
        handle = _Handle(slide, DeepZoomGenerator(slide, TILE_SIZE, OVERLAP, limit_bounds=False), fd, path, now)
        _open[scan.sha256] = handle
        _close_idle(now)
        return handle


def close_all() -> None:
    with _lock:
        while _open:
            _open.popitem()[1].close()
