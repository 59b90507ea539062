"""The error types every door maps the same way. A service or selector raises them
without knowing who asked; pages, the API and integrations turn them into their own
answers (a message on the page, a 4xx with a stable code, a DICOMweb failure reason)."""

from __future__ import annotations


class ApplicationError(Exception):
    """A refusal the user can act on: ``code`` is stable for clients, ``message`` is
    for people and names the problem (never patient data)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotFound(Exception):
    """No such object, or none the asking user may see. Every door answers 404, never
    403, so a user cannot learn that another unit's record exists."""


class ServiceUnavailable(Exception):
    """A dependency (the image store) cannot serve the request now; nothing was saved.
    Pages answer 503 with Retry-After, the API 503 with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
