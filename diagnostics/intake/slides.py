"""Whole-slide intake: decide whether an assembled upload is a slide we can read, and
make the copy we store anonymous.

OpenSlide (openslide-python with the openslide-bin library from PyPI) reads every
vendor format it knows through one interface, DICOM WSI included (OpenSlide 4). A slide
is opened first in a child process (``python -m diagnostics.intake.slides PATH``) with a
memory and time limit: OpenSlide is C code, and a hostile file that crashed it would
take the worker down with it. The child prints what it found as JSON; only then does
any long-lived process open the file.

No Django imports: limits are passed in.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

from core.exceptions import ApplicationError

# What each OpenSlide vendor is called on disk. A name must agree with the content,
# as for images: "slide.svs" that is really a generic TIFF is refused.
VENDOR_EXTENSIONS: dict[str, frozenset[str]] = {
    "aperio": frozenset({".svs", ".tif", ".tiff"}),
    "generic-tiff": frozenset({".tif", ".tiff"}),
    "hamamatsu": frozenset({".ndpi"}),
    "dicom": frozenset({".dcm", ".dicom", ""}),
    "philips": frozenset({".tif", ".tiff"}),
    "leica": frozenset({".scn"}),
    "ventana": frozenset({".bif", ".tif", ".tiff"}),
    "trestle": frozenset({".tif", ".tiff"}),
    "zeiss": frozenset({".czi"}),
    "sakura": frozenset({".svslide"}),
}
VENDOR_NAMES = {
    "aperio": "Aperio SVS",
    "generic-tiff": "generic tiled TIFF",
    "hamamatsu": "Hamamatsu NDPI",
    "dicom": "DICOM WSI",
    "philips": "Philips TIFF",
    "leica": "Leica SCN",
    "ventana": "Ventana BIF",
    "trestle": "Trestle TIFF",
    "zeiss": "Zeiss CZI",
    "sakura": "Sakura SVSlide",
}
# Formats made of several files: one upload cannot carry them.
MULTI_FILE_EXTENSIONS = {".mrxs": "MIRAX", ".vms": "Hamamatsu VMS", ".vmu": "Hamamatsu VMU"}
TIFF_VENDORS = frozenset({"aperio", "generic-tiff", "hamamatsu", "philips", "ventana", "trestle", "leica"})
ASSOCIATED_NEVER_SERVED = ("label", "macro", "map")

MPP_MIN, MPP_MAX = 0.05, 50.0
PROBE_TIMEOUT_S = 120
PROBE_MEMORY_BYTES = 3 * 1024**3


class SlideRejected(ApplicationError):
    """A refused slide: ``code`` is stable for clients, ``message`` names the problem."""


def accepted_slide_extensions() -> list[str]:
    names = {ext for exts in VENDOR_EXTENSIONS.values() for ext in exts if ext}
    return sorted(names)


@dataclass
class SlideInfo:
    vendor: str
    width: int
    height: int
    levels: list[list[float]]  # [width, height, downsample] per level
    mpp_x: float | None
    mpp_y: float | None
    associated: list[str] = field(default_factory=list)
    objective_power: str = ""
    tiff_pages: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def format_name(self) -> str:
        return VENDOR_NAMES.get(self.vendor, self.vendor)


def _sniff(head: bytes) -> str:
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.lstrip().startswith(b"[GENERAL]"):
        return "mirax-index"
    return ""


def _probe(path: str, filename: str, max_pixels: int) -> dict[str, Any]:
    """The child's work: runs where a crash costs nothing but this process."""
    import openslide

    from diagnostics.intake import tiffdir

    size = os.path.getsize(path)
    if size == 0:
        raise SlideRejected("empty_file", "the file is empty")
    extension = PurePath(filename).suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(512)
    kind = _sniff(head)
    if extension in MULTI_FILE_EXTENSIONS or kind == "mirax-index":
        name = MULTI_FILE_EXTENSIONS.get(extension, "MIRAX")
        raise SlideRejected(
            "slide_multi_file",
            f"a {name} slide is an index file plus a folder of data files, and the data folder is not part of "
            "this upload. Export the slide from the scanner's software as one file (SVS, tiled TIFF, NDPI or DICOM "
            "WSI) and upload that.",
        )
    if kind in ("PNG", "JPEG"):
        raise SlideRejected(
            "slide_not_wsi" if extension in ("", ".png", ".jpg", ".jpeg") else "extension_mismatch",
            f"the file is a {kind} picture, not a whole-slide image"
            + (f" (its name says {extension})" if extension not in ("", ".png", ".jpg", ".jpeg") else "")
            + "; pictures are uploaded under 'Add images'",
        )
    if kind == "zip":
        raise SlideRejected("slide_not_wsi", "archives are not accepted: upload the slide file itself")
    pages = 0
    if kind == "tiff":
        with open(path, "rb") as fh:
            try:
                summary = tiffdir.check_structure(fh, size, max_pixels=max_pixels)
            except tiffdir.TiffRejected as exc:
                raise SlideRejected(exc.code, exc.message) from exc
        pages = summary.pages
    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except Exception:  # OpenSlide raises its own error types for broken files
        vendor = None
    if vendor is None:
        what = {"tiff": "TIFF", "dicom": "DICOM file"}.get(kind, "file")
        raise SlideRejected(
            "slide_unreadable" if extension in accepted_slide_extensions() or not extension else "extension_mismatch",
            f"the {what} is not a whole-slide image OpenSlide can read (formats: "
            f"{', '.join(sorted(set(VENDOR_NAMES.values())))})",
        )
    expected = VENDOR_EXTENSIONS.get(vendor, frozenset())
    if extension not in expected:
        shown = extension or "no extension"
        raise SlideRejected(
            "extension_mismatch",
            f"the file name says {shown} but the content is a {VENDOR_NAMES.get(vendor, vendor)} slide "
            f"(expected {', '.join(sorted(e for e in expected if e)) or 'another name'}); rename it or check the file",
        )
    try:
        slide = openslide.OpenSlide(path)
    except Exception as exc:
        raise SlideRejected("slide_unreadable", f"OpenSlide could not open the slide: {exc}") from exc
    try:
        width, height = slide.dimensions
        if width < 1 or height < 1:
            raise SlideRejected("corrupt_slide", "the slide has no pixels")
        if width * height > max_pixels:
            raise SlideRejected(
                "too_many_pixels",
                f"the slide declares {width:,} x {height:,} = {width * height:,} pixels; the limit is {max_pixels:,}",
            )
        levels: list[list[float]] = []
        for i in range(slide.level_count):
            lw, lh = slide.level_dimensions[i]
            ds = float(slide.level_downsamples[i])
            if i and (lw > levels[-1][0] or lh > levels[-1][1]):
                raise SlideRejected(
                    "slide_levels_inconsistent",
                    f"level {i} ({lw:,} x {lh:,}) is larger than the level above it: the pyramid's levels do not "
                    "match their declared sizes",
                )
            # Width and height of a level must shrink by one factor (give or take rounding).
            if lw and lh and abs(width / lw - height / lh) > 0.05 * max(width / lw, height / lh) + 2.0 / min(lw, lh):
                raise SlideRejected(
                    "slide_levels_inconsistent",
                    f"level {i} declares {lw:,} x {lh:,} pixels: its width shrinks by {width / lw:.2f} and its "
                    f"height by {height / lh:.2f}, so the pyramid's levels do not match their declared sizes",
                )
            levels.append([lw, lh, ds])
        # Decode a little of every level (corners and centre): damaged or missing image
        # data fails here instead of in the worker or the viewer.
        for i, (level_w, level_h, ds) in enumerate(levels):
            w, h = int(level_w), int(level_h)
            for fx, fy in ((0, 0), (0.5, 0.5), (1, 1)):
                x, y = int(max(0, w * fx - 64) * ds), int(max(0, h * fy - 64) * ds)
                slide.read_region((x, y), i, (min(64, w), min(64, h)))
        props = slide.properties
        mpp: list[float | None] = []
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            try:
                value = float(props[key])
            except (KeyError, ValueError):
                value = None
            mpp.append(value if value is not None and MPP_MIN <= value <= MPP_MAX else None)
        return SlideInfo(
            vendor=vendor,
            width=width,
            height=height,
            levels=levels,
            mpp_x=mpp[0],
            mpp_y=mpp[1],
            associated=sorted(slide.associated_images.keys()),
            objective_power=props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER, ""),
            tiff_pages=pages,
        ).to_dict()
    except SlideRejected:
        raise
    except Exception as exc:
        raise SlideRejected(
            "corrupt_slide", "the slide's image data cannot be decoded: the file is damaged or truncated"
        ) from exc
    finally:
        slide.close()


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY_BYTES, PROBE_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def probe(path: Path, *, filename: str, max_pixels: int) -> SlideInfo:
    """Open the slide in a child process; SlideRejected names whatever is wrong."""
    try:
        # Our own interpreter and module; the file's path and name are arguments, never a shell.
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "diagnostics.intake.slides", str(path), filename, str(max_pixels)],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            preexec_fn=_limit_child,
            cwd=str(Path(__file__).resolve().parents[2]),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SlideRejected("slide_unreadable", f"reading the slide took longer than {PROBE_TIMEOUT_S} s") from exc
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise SlideRejected(
            "slide_unreadable", "the slide reader failed on this file (it is damaged or not a slide)"
        ) from exc
    if not answer.get("ok"):
        raise SlideRejected(answer.get("code", "slide_unreadable"), answer.get("message", "the slide was refused"))
    return SlideInfo(**answer["info"])


def anonymise(path: Path, info: SlideInfo) -> list[str]:
    """Remove the label and macro images from the copy at ``path`` where the format
    allows (TIFF-based formats: Aperio, generic TIFF, NDPI under 4 GB and others), the
    way OpenSlide's anonymisation tool does. Returns the names removed."""
    from diagnostics.intake import tiffdir

    present = [name for name in info.associated if name in ASSOCIATED_NEVER_SERVED]
    if info.vendor not in TIFF_VENDORS or not present:
        return []
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        try:
            return tiffdir.remove_associated(fh, size)
        except tiffdir.TiffRejected as exc:
            raise SlideRejected(exc.code, exc.message) from exc


def resolution(info: SlideInfo, stated_mpp: float | None) -> tuple[float, float, str]:
    """The slide's micrometres per pixel: its own, else the one the user stated. A slide
    without either is refused (a tile grid at the model's resolution needs it)."""
    if info.mpp_x and info.mpp_y:
        return info.mpp_x, info.mpp_y, "file"
    if stated_mpp is not None:
        if not MPP_MIN <= stated_mpp <= MPP_MAX:
            raise SlideRejected(
                "invalid_resolution", f"the stated resolution must lie between {MPP_MIN} and {MPP_MAX} um per pixel"
            )
        return stated_mpp, stated_mpp, "stated"
    raise SlideRejected(
        "slide_no_resolution",
        "the slide does not record its resolution (micrometres per pixel); state it with the upload "
        "(for example 0.25 for a 40x scan, 0.5 for 20x, about 1.0 for 10x)",
    )


def _main(argv: list[str]) -> int:
    path, filename, max_pixels = argv[0], argv[1], int(argv[2])
    try:
        print(json.dumps({"ok": True, "info": _probe(path, filename, max_pixels)}))
    except SlideRejected as exc:
        print(json.dumps({"ok": False, "code": exc.code, "message": exc.message}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
