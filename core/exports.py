"""CSV exports that are safe to open in a spreadsheet.

A cell whose text starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
read as a formula by Excel, LibreOffice and Google Sheets (CSV or formula injection:
a user name such as ``-2+3`` or ``=HYPERLINK(...)`` would run when an admin opens
the audit export). Such text is prefixed with a single quote, which spreadsheets show
as a text marker; numbers are written as they are. Every export writes through
``csv_writer`` so none forgets it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, Protocol

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class _Writable(Protocol):
    def write(self, value: str, /) -> Any: ...


def safe_cell(value: Any) -> Any:
    """The value as a spreadsheet will not evaluate it: text that starts like a formula
    gets a leading single quote; anything else (numbers, None) is unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class SafeCsvWriter:
    """``csv.writer`` with every cell passed through `safe_cell`."""

    def __init__(self, out: _Writable) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([safe_cell(value) for value in row])


def csv_writer(out: _Writable) -> SafeCsvWriter:
    return SafeCsvWriter(out)
