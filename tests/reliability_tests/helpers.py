from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cancerweb.celery import app


@contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery publisher at another broker (a dead port, or a
    Redis server a test started), then back."""

    def reset() -> None:
        # Forget the cached pools, without closing them: kombu keeps one pool per
        # broker URL, and the one for the original URL is used again afterwards.
        app._pool = None
        app.amqp._producer_pool = None

    # The CELERY_BROKER_URL variable outranks conf.broker_url; the write URL outranks both.
    old = app.conf.get("broker_write_url")
    reset()
    app.conf.broker_write_url = url
    try:
        yield
    finally:
        reset()
        app.conf.broker_write_url = old


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
