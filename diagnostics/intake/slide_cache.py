"""The one local-disk part of slide storage: a bounded cache of decrypted slide copies.

OpenSlide reads files, and a slide is stored as encrypted chunks behind Django's
storage API (a folder or an object store), so workers and the tile server decrypt a
slide into this cache before reading it. The cache holds at most
SLIDE_CACHE_MAX_BYTES (a single larger slide is still admitted, alone), copies unused
for SLIDE_CACHE_IDLE_S are deleted, and a worker deletes its copy right after its job.

Several processes share the folder: each slide has a lock file; a reader holds a shared
lock while it uses the copy, and a copy is deleted only under an exclusive lock, so
nobody deletes a file another process is reading. Copies are written beside their
final name and renamed into place, so a half-written copy is never opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from diagnostics.intake import storage

# A copy used this recently is never evicted for space (it is about to be read).
RECENT_S = 5.0


class SlideCacheError(Exception):
    """The stored slide could not be made into a local copy (phrased for a job's error)."""


def root() -> Path:
    folder = Path(settings.SLIDE_CACHE_DIR)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _slide_file(folder: Path) -> Path | None:
    found = [p for p in folder.glob("slide*") if p.is_file()] if folder.is_dir() else []
    return found[0] if found else None


def _extension(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return ext if ext.replace(".", "").isalnum() and len(ext) <= 10 else ""


@contextlib.contextmanager
def _locked(sha256: str, mode: int) -> Iterator[int]:
    fd = os.open(root() / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive_or_nothing(sha256: str) -> Iterator[bool]:
    """The slide's lock exclusively if nobody holds it; never waits. Yields whether it
    was taken (a reader or a writer holds it otherwise)."""
    fd = os.open(root() / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def _entries() -> list[tuple[str, Path, int, float]]:
    out = []
    for folder in root().iterdir():
        if not folder.is_dir() or len(folder.name) != 64:
            continue
        f = _slide_file(folder)
        if f is None:
            continue
        st = f.stat()
        out.append((folder.name, folder, st.st_size, st.st_mtime))
    return out


def evict(*, need: int = 0, keep: str = "") -> list[str]:
    """Delete idle copies, then the least recently used ones until ``need`` more bytes
    fit under the cap. Copies in use (shared lock held) are skipped."""
    now = time.time()
    entries = sorted(_entries(), key=lambda e: e[3])
    total = sum(e[2] for e in entries)
    removed = []
    for sha, folder, size, mtime in entries:
        if sha == keep:
            continue
        idle = now - mtime > settings.SLIDE_CACHE_IDLE_S
        over = total + need > settings.SLIDE_CACHE_MAX_BYTES and now - mtime > RECENT_S
        if not (idle or over):
            continue
        with _exclusive_or_nothing(sha) as taken:
            if not taken:
                continue  # someone reads it now
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(sha)
    return removed


def _assemble(*, prefix: str, sha256: str, size: int, chunk_bytes: int, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = target.with_name(f".partial-{os.getpid()}-{threading.get_ident()}")
    digest = hashlib.sha256()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            for chunk in storage.iter_chunks(prefix, storage.chunk_count(size, chunk_bytes)):
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != sha256:
            raise SlideCacheError("stored slide bytes do not match their SHA-256")
        os.replace(partial, target)
    except storage.EncryptionError as exc:
        raise SlideCacheError(f"stored slide chunks failed decryption: {exc}") from exc
    finally:
        if partial.exists():
            partial.unlink()


@dataclass(frozen=True)
class StoredSlide:
    """What the cache needs to know of a stored slide (a Scan of kind slide)."""

    sha256: str
    prefix: str
    size: int
    chunk_bytes: int
    name: str  # the original file name: OpenSlide tells some formats by their extension

    @classmethod
    def of(cls, scan: Any) -> StoredSlide:
        return cls(scan.sha256, scan.storage_name, scan.size_bytes, scan.chunk_bytes, scan.original_name)


@contextlib.contextmanager
def local_copy(slide: StoredSlide, *, keep: bool) -> Iterator[Path]:
    """A decrypted local copy of the slide for the duration of the block. With
    ``keep=False`` (workers) it is deleted afterwards unless someone else reads it."""
    folder = root() / slide.sha256
    # Readers share the lock; only a missing copy takes it exclusively, to write it (a
    # conversion releases the shared lock first, so two converters cannot deadlock, and
    # an open viewer's shared lock never blocks a worker that finds the copy there).
    with _locked(slide.sha256, fcntl.LOCK_SH) as fd:
        path = _slide_file(folder)
        if path is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = _slide_file(folder)
            if path is None:
                evict(need=slide.size, keep=slide.sha256)
                path = folder / f"slide{_extension(slide.name)}"
                _assemble(
                    prefix=slide.prefix,
                    sha256=slide.sha256,
                    size=slide.size,
                    chunk_bytes=slide.chunk_bytes,
                    target=path,
                )
            fcntl.flock(fd, fcntl.LOCK_SH)
        os.utime(path)  # the last use, for the idle and LRU rules
        try:
            yield path
        finally:
            if not keep:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # the tile server reads it: it expires when idle
                else:
                    shutil.rmtree(folder, ignore_errors=True)


def adopt(*, sha256: str, name: str, source: Path) -> bool:
    """Move an already decrypted copy (the intake's) into the cache, so the first job
    on the slide does not decrypt it again. Idle eviction removes it if nobody comes.

    Only a saving, so it never waits: when anyone holds the slide's lock (a viewer has
    the same slide open, or a worker is writing its copy), a copy exists or is on its
    way and ``source`` is left where it is. Returns whether it was adopted."""
    folder = root() / sha256
    with _exclusive_or_nothing(sha256) as taken:
        if not taken or _slide_file(folder) is not None:
            return False
        evict(need=source.stat().st_size, keep=sha256)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(source, folder / f"slide{_extension(name)}")
        return True


def hold(slide: StoredSlide) -> tuple[Path, int]:
    """For the tile server's open handles: a local copy and a file descriptor holding a
    shared lock on it until ``release(fd)``, so the copy is not evicted while open."""
    with local_copy(slide, keep=True) as path:
        fd = os.open(root() / f"{slide.sha256}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return path, fd


def release(fd: int) -> None:
    os.close(fd)


def touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)
