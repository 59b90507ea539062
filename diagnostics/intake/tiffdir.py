"""The directory structure of a TIFF or BigTIFF file, read from a file handle (slides
are gigabytes; nothing here holds pixel data), for two jobs OpenSlide does not do:

- check what a TIFF-based slide claims against what it holds, before any reader
  trusts it: every page inside the file, tiles for the whole declared size, tile data
  that does not run past the end (a truncated upload), a pixel count within the cap;
- remove label and macro pages from the stored copy, the way OpenSlide's
  anonymisation tool does: unlink the page from the chain and overwrite its image
  data with zeros, so neither a reader nor a hex editor finds the label.

No Django imports; errors carry a stable code and a message for people.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from core.exceptions import ApplicationError

MAX_PAGES = 1000
# More tiles than a 200,000 x 200,000 px slide at 64 px tiles: an offset array longer
# than this is an attacker's, not a scanner's.
MAX_ARRAY = 20_000_000

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TYPE_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I", 16: "Q", 17: "q", 18: "Q"}

IMAGE_WIDTH, IMAGE_LENGTH, IMAGE_DESCRIPTION = 256, 257, 270
STRIP_OFFSETS, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 273, 277, 278, 279
PLANAR_CONFIGURATION = 284
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 322, 323, 324, 325
NDPI_SOURCELENS = 65421  # Hamamatsu: -1 marks the macro image, -2 the focus map


class TiffRejected(ApplicationError):
    """The TIFF structure is refused; ``code`` is stable, ``message`` names the problem."""


@dataclass
class Entry:
    tag: int
    type: int
    count: int
    value_at: int  # file offset of the value (inline or pointed to)


@dataclass
class Page:
    index: int
    offset: int
    next_pointer_at: int  # where this page's "next page" offset is written
    entries: dict[int, Entry] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    description: str = ""

    @property
    def tiled(self) -> bool:
        return TILE_OFFSETS in self.entries


class TiffFile:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        head = self._read(0, 16)
        if head[:2] not in (b"II", b"MM"):
            raise TiffRejected("corrupt_slide", "the file is not a TIFF")
        self.e = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(self.e + "H", head[2:4])[0]
        if magic == 42:
            self.big = False
            self.first_pointer_at = 4
        elif magic == 43:
            self.big = True
            self.first_pointer_at = 8
        else:
            raise TiffRejected("corrupt_slide", "the file is not a TIFF")

    def _read(self, offset: int, n: int) -> bytes:
        if offset < 0 or offset + n > self.size:
            raise TiffRejected("truncated_slide", "the file is truncated: its directory points past its end")
        self.fh.seek(offset)
        data = self.fh.read(n)
        if len(data) != n:
            raise TiffRejected("truncated_slide", "the file is truncated: its directory points past its end")
        return data

    def _offset(self, at: int) -> int:
        fmt, n = ("Q", 8) if self.big else ("I", 4)
        return int(struct.unpack(self.e + fmt, self._read(at, n))[0])

    def pages(self) -> list[Page]:
        """The chain of image file directories, checked for loops and bounds."""
        pages: list[Page] = []
        seen: set[int] = set()
        pointer_at = self.first_pointer_at
        offset = self._offset(pointer_at)
        while offset:
            if offset in seen:
                raise TiffRejected("corrupt_slide", "the file's page chain loops back on itself")
            if len(pages) >= MAX_PAGES:
                raise TiffRejected("corrupt_slide", f"the file has more than {MAX_PAGES} pages")
            seen.add(offset)
            page, pointer_at = self._page(len(pages), offset)
            pages.append(page)
            offset = self._offset(pointer_at)
        if not pages:
            raise TiffRejected("corrupt_slide", "the TIFF holds no image")
        return pages

    def _page(self, index: int, offset: int) -> tuple[Page, int]:
        if self.big:
            count = struct.unpack(self.e + "Q", self._read(offset, 8))[0]
            entry_size, start = 20, offset + 8
        else:
            count = struct.unpack(self.e + "H", self._read(offset, 2))[0]
            entry_size, start = 12, offset + 2
        if count > 4096:
            raise TiffRejected("corrupt_slide", "a page of the file declares an implausible number of tags")
        raw = self._read(start, entry_size * count)
        page = Page(index=index, offset=offset, next_pointer_at=start + entry_size * count)
        inline = 8 if self.big else 4
        for i in range(count):
            chunk = raw[i * entry_size : (i + 1) * entry_size]
            if self.big:
                tag, typ, n = struct.unpack(self.e + "HHQ", chunk[:12])
                value_field = start + i * entry_size + 12
            else:
                tag, typ, n = struct.unpack(self.e + "HHI", chunk[:8])
                value_field = start + i * entry_size + 8
            size = _TYPE_SIZES.get(typ)
            if size is None:
                continue  # an unknown type: readers skip it, so do we
            value_at = value_field if size * n <= inline else self._offset(value_field)
            page.entries[tag] = Entry(tag, typ, n, value_at)
        page.width = self.scalar(page, IMAGE_WIDTH)
        page.height = self.scalar(page, IMAGE_LENGTH)
        if IMAGE_DESCRIPTION in page.entries:
            e = page.entries[IMAGE_DESCRIPTION]
            page.description = self._read(e.value_at, min(e.count, 65536)).split(b"\x00")[0].decode("latin-1")
        return page, page.next_pointer_at

    def values(self, page: Page, tag: int, limit: int = MAX_ARRAY) -> list[float]:
        e = page.entries.get(tag)
        if e is None:
            return []
        if e.count > limit:
            raise TiffRejected("corrupt_slide", f"a page of the file declares {e.count:,} values for one tag")
        fmt = _TYPE_FORMATS.get(e.type)
        if fmt is None:
            return []
        data = self._read(e.value_at, _TYPE_SIZES[e.type] * e.count)
        return list(struct.unpack(f"{self.e}{e.count}{fmt}", data))

    def scalar(self, page: Page, tag: int, default: int = 0) -> int:
        values = self.values(page, tag, limit=16)
        return int(values[0]) if values else default

    def data_ranges(self, page: Page) -> list[tuple[int, int]]:
        """(offset, length) of every strip or tile of the page."""
        if page.tiled:
            offsets, counts = self.values(page, TILE_OFFSETS), self.values(page, TILE_BYTE_COUNTS)
        else:
            offsets, counts = self.values(page, STRIP_OFFSETS), self.values(page, STRIP_BYTE_COUNTS)
        if len(offsets) != len(counts):
            raise TiffRejected(
                "corrupt_slide", f"page {page.index + 1} lists {len(offsets)} offsets for {len(counts)} sizes"
            )
        return [(int(o), int(c)) for o, c in zip(offsets, counts, strict=True)]


@dataclass(frozen=True)
class TiffSummary:
    pages: int
    tiled_pages: int
    largest: tuple[int, int]


def check_structure(fh: BinaryIO, size: int, *, max_pixels: int) -> TiffSummary:
    """Refuse a TIFF slide whose structure cannot be trusted (see module docstring)."""
    tiff = TiffFile(fh, size)
    pages = tiff.pages()
    for page in pages:
        if page.width < 1 or page.height < 1:
            raise TiffRejected("corrupt_slide", f"page {page.index + 1} of the file has no pixels")
        if page.width * page.height > max_pixels:
            raise TiffRejected(
                "too_many_pixels",
                f"the slide declares {page.width:,} x {page.height:,} = {page.width * page.height:,} pixels; "
                f"the limit is {max_pixels:,}",
            )
    tiled = [p for p in pages if p.tiled]
    if not tiled:
        raise TiffRejected(
            "slide_not_tiled",
            "the TIFF is not tiled: a whole-slide image stores its pixels in tiles and a pyramid of levels. "
            "A plain TIFF picture can be uploaded under 'Add images' instead.",
        )
    for page in pages:
        spp = tiff.scalar(page, SAMPLES_PER_PIXEL, 1)
        planes = spp if tiff.scalar(page, PLANAR_CONFIGURATION, 1) == 2 else 1
        if page.tiled:
            tw, th = tiff.scalar(page, TILE_WIDTH), tiff.scalar(page, TILE_LENGTH)
            if tw < 1 or th < 1:
                raise TiffRejected("corrupt_slide", f"page {page.index + 1} declares tiles of no size")
            expected = math.ceil(page.width / tw) * math.ceil(page.height / th) * planes
        else:
            rps = tiff.scalar(page, ROWS_PER_STRIP, page.height) or page.height
            expected = math.ceil(page.height / max(1, min(rps, page.height))) * planes
        ranges = tiff.data_ranges(page)
        if len(ranges) != expected:
            kind = "tiles" if page.tiled else "strips"
            raise TiffRejected(
                "slide_levels_inconsistent",
                f"page {page.index + 1} declares {page.width:,} x {page.height:,} pixels, which needs {expected:,} "
                f"{kind}, but it holds {len(ranges):,}: the pyramid's levels do not match their declared sizes",
            )
        end = max((o + c for o, c in ranges), default=0)
        if end > size:
            raise TiffRejected(
                "truncated_slide",
                f"the file is truncated: page {page.index + 1}'s image data ends at byte {end:,} "
                f"but the file has {size:,} bytes",
            )
    return TiffSummary(pages=len(pages), tiled_pages=len(tiled), largest=(tiled[0].width, tiled[0].height))


def associated_kind(tiff: TiffFile, page: Page) -> str | None:
    """'label' or 'macro' when the page is one, by the rules OpenSlide's readers use:
    Aperio names them on the description's second line; Hamamatsu marks the macro with
    source lens -1 (and its focus map with -2)."""
    lines = page.description.replace("|", "\n").splitlines()
    for line in lines[1:] if len(lines) > 1 else lines:
        word = line.strip().split(" ", 1)[0].lower()
        if word in ("label", "macro"):
            return word
    if NDPI_SOURCELENS in page.entries:
        lens = tiff.values(page, NDPI_SOURCELENS, limit=4)
        if lens and lens[0] == -1:
            return "macro"
        if lens and lens[0] == -2:
            return "map"
    return None


def remove_associated(fh: BinaryIO, size: int) -> list[str]:
    """Unlink every label and macro page from the chain and overwrite its image data with
    zeros, in place (``fh`` opened r+b). Returns what was removed, e.g. ['label', 'macro']."""
    removed: list[str] = []
    while True:
        tiff = TiffFile(fh, size)
        pages = tiff.pages()
        target = next((p for p in pages if associated_kind(tiff, p)), None)
        if target is None:
            return removed
        kind = associated_kind(tiff, target)
        assert kind is not None
        ranges = tiff.data_ranges(target)
        next_offset = tiff._offset(target.next_pointer_at)
        pointer_at = tiff.first_pointer_at if target.index == 0 else pages[target.index - 1].next_pointer_at
        fmt, width = ("Q", 8) if tiff.big else ("I", 4)
        fh.seek(pointer_at)
        fh.write(struct.pack(tiff.e + fmt, next_offset))
        for offset, length in ranges:
            fh.seek(offset)
            remaining = length
            while remaining:
                step = min(remaining, 1 << 20)
                fh.write(b"\x00" * step)
                remaining -= step
        del width
        removed.append(kind)
