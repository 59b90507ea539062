"""The local cache of decrypted slide copies (diagnostics/intake/slide_cache.py): a
copy the tile server holds open is never deleted under it, and a duplicate slide that
arrives while a viewer has the same slide open is accepted without waiting for the
viewer (the intake's adoption of its copy used to wait on the viewer's lock until the
task's time limit, 270 s, and fail)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from diagnostics.intake import slide_cache

SHA = "ab" * 32


@pytest.fixture
def cache(settings, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    settings.SLIDE_CACHE_DIR = tmp_path / "cache"
    return tmp_path


def _file(folder: Path, name: str, body: bytes) -> Path:
    path = folder / name
    path.write_bytes(body)
    return path


def _stored(size: int) -> slide_cache.StoredSlide:
    # The copy is already in the cache, so nothing is read from storage.
    return slide_cache.StoredSlide(SHA, "no-such-prefix", size, 1 << 20, "slide-01.tiff")


def test_a_duplicate_arriving_while_a_viewer_holds_the_slide_open_does_not_wait(cache: Path) -> None:
    assert slide_cache.adopt(sha256=SHA, name="slide-01.tiff", source=_file(cache, "first", b"first copy"))
    path, fd = slide_cache.hold(_stored(10))  # the tile server's open handle: a shared lock
    try:
        second = _file(cache, "second", b"second copy")
        answers: list[bool] = []
        intake = threading.Thread(
            target=lambda: answers.append(slide_cache.adopt(sha256=SHA, name="slide-01.tiff", source=second)),
            daemon=True,  # a regression blocks on the lock: the join below gives up, the test fails
        )
        intake.start()
        intake.join(timeout=60)
        assert answers == [False]
        assert second.exists()  # left for the intake to delete with its work folder
        assert path.read_bytes() == b"first copy"  # the viewer's copy is untouched
        # A worker's job on the same slide reads the copy and leaves it for the viewer.
        with slide_cache.local_copy(_stored(10), keep=False) as worker_path:
            assert worker_path == path
        assert path.exists()
        assert slide_cache.evict(need=1 << 40) == []  # in use: not evicted even to make room
    finally:
        slide_cache.release(fd)
    # Nobody reads it now: a worker's copy goes once its job is done, and the next
    # arrival is adopted.
    with slide_cache.local_copy(_stored(10), keep=False):
        pass
    assert not path.exists()
    third = _file(cache, "third", b"third copy")
    assert slide_cache.adopt(sha256=SHA, name="slide-01.tiff", source=third)
    assert not third.exists() and path.read_bytes() == b"third copy"
