"""Schemathesis hooks (loaded with SCHEMATHESIS_HOOKS): how to send the media types the
API takes that schemathesis cannot serialise by itself."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.serializer("application/offset+octet-stream")
def tus_bytes(ctx: Any, value: Any) -> bytes:
    """A tus PATCH body: raw bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


@schemathesis.serializer("multipart/related")
def stow_body(ctx: Any, value: Any) -> bytes:
    """A STOW-RS body: whatever was generated, as raw bytes (the endpoint must refuse
    what is not a DICOM multipart with a 4xx, never a 5xx)."""
    return value if isinstance(value, bytes) else str(value).encode()
