"""Cells of CSV exports that a spreadsheet opens safely."""

from __future__ import annotations

from typing import Any

# A spreadsheet reads a cell starting with one of these as a formula (OWASP's list for
# CSV injection), so a name such as "=HYPERLINK(...)" could run when the file is opened.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A text cell that would start a formula, with a leading apostrophe; numbers as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
