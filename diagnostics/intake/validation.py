"""Upload validation: decide from the bytes (not the file name) what a file is,
and refuse anything that is not a complete image within the limits.

Formats are a registry of sniffers and checkers; DICOM is one more entry (its
parsing and de-identification live in diagnostics/dicom.py). This module imports
no Django: limits are passed in.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from PIL import Image, UnidentifiedImageError

from core.exceptions import ApplicationError


class UploadRejected(ApplicationError):
    """A refused file. ``code`` is stable for clients; ``message`` is for people."""


@dataclass(frozen=True)
class ValidatedImage:
    format: str  # one of the registry's names: PNG, JPEG, TIFF, DICOM
    width: int
    height: int
    frames: int = 1
    # DICOM (0028,0301) Burned In Annotation = YES: identifying text may be in the pixels.
    burned_in_annotation: bool = False


@dataclass(frozen=True)
class ImageFormat:
    name: str
    extensions: frozenset[str]
    sniff: Callable[[bytes], bool]
    check: Callable[[bytes, int], ValidatedImage]
    # Only DICOM may come without an extension: PS3.10 media (DICOMDIR file sets) and
    # PACS exports name files without one. Any extension given must still match.
    allow_no_extension: bool = False


def _check_with_pillow(expected: str) -> Callable[[bytes, int], ValidatedImage]:
    def check(data: bytes, max_pixels: int) -> ValidatedImage:
        try:
            with warnings.catch_warnings():
                # Pillow's bomb guard warns at MAX_IMAGE_PIXELS; make it an error.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:
                    if img.format != expected:
                        raise UploadRejected("unsupported_type", f"the content is not a valid {expected} image")
                    width, height = img.size
                    if width < 1 or height < 1:
                        raise UploadRejected("corrupt_image", "the image has no pixels")
                    if width * height > max_pixels:
                        raise UploadRejected(
                            "too_many_pixels",
                            f"the image is {width}×{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
                        )
                    if getattr(img, "n_frames", 1) > 1 and expected != "TIFF":
                        raise UploadRejected("unsupported_type", "animated images are not accepted")
                    # Decode every pixel now: a truncated file must fail here, not in the worker.
                    img.load()
        except UploadRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UploadRejected("too_many_pixels", "the image declares more pixels than allowed") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UploadRejected(
                "corrupt_image", f"the {expected} file is damaged or truncated and cannot be decoded"
            ) from exc
        return ValidatedImage(format=expected, width=width, height=height)

    return check


# More pages than any slide or scanner export we accept; walking a longer IFD chain
# is CPU spent on an attacker's file.
MAX_TIFF_PAGES = 1000


def _tiff_structure(data: bytes) -> None:
    """Walk the chain of image file directories before Pillow does: a chain that loops,
    points outside the file or runs past MAX_TIFF_PAGES is refused."""
    if len(data) < 8:
        raise UploadRejected("corrupt_image", "the TIFF file is damaged or truncated and cannot be decoded")
    endian = "<" if data[:2] == b"II" else ">"
    seen: set[int] = set()
    offset = struct.unpack(endian + "I", data[4:8])[0]
    while offset:
        if offset in seen:
            raise UploadRejected("corrupt_image", "the TIFF file's page chain loops back on itself")
        if len(seen) >= MAX_TIFF_PAGES:
            raise UploadRejected("unsupported_type", f"the TIFF file has more than {MAX_TIFF_PAGES} pages")
        if offset + 2 > len(data):
            raise UploadRejected("corrupt_image", "the TIFF file points past its own end")
        seen.add(offset)
        count = struct.unpack(endian + "H", data[offset : offset + 2])[0]
        next_at = offset + 2 + 12 * count
        if next_at + 4 > len(data):
            raise UploadRejected("corrupt_image", "the TIFF file points past its own end")
        offset = struct.unpack(endian + "I", data[next_at : next_at + 4])[0]


def _check_tiff(data: bytes, max_pixels: int) -> ValidatedImage:
    _tiff_structure(data)
    return _check_with_pillow("TIFF")(data, max_pixels)


def _check_dicom(data: bytes, max_pixels: int) -> ValidatedImage:
    from diagnostics.intake import dicom

    try:
        info = dicom.check(data, max_pixels=max_pixels)
    except dicom.DicomRejected as exc:
        raise UploadRejected(exc.code, exc.message) from exc
    except MemoryError as exc:
        raise UploadRejected("too_many_pixels", "the DICOM image is too large to decode") from exc
    return ValidatedImage(
        format="DICOM",
        width=info.width,
        height=info.height,
        frames=info.frames,
        burned_in_annotation=info.burned_in_annotation,
    )


def _sniff_dicom(data: bytes) -> bool:
    # PS3.10: a 128-byte preamble, then "DICM". Bare data sets without it are refused.
    return len(data) >= 132 and data[128:132] == b"DICM"


FORMATS: list[ImageFormat] = [
    # DICOM first: its preamble may legally hold a TIFF header (dual-personality files).
    ImageFormat(
        name="DICOM",
        extensions=frozenset({".dcm", ".dicom"}),
        sniff=_sniff_dicom,
        check=_check_dicom,
        allow_no_extension=True,
    ),
    ImageFormat(
        name="PNG",
        extensions=frozenset({".png"}),
        sniff=lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
        check=_check_with_pillow("PNG"),
    ),
    ImageFormat(
        name="JPEG",
        extensions=frozenset({".jpg", ".jpeg", ".jpe"}),
        sniff=lambda b: b.startswith(b"\xff\xd8\xff"),
        check=_check_with_pillow("JPEG"),
    ),
    ImageFormat(
        name="TIFF",
        extensions=frozenset({".tif", ".tiff"}),
        sniff=lambda b: b[:4] in (b"II*\x00", b"MM\x00*"),
        check=_check_tiff,
    ),
]


def accepted_extensions() -> list[str]:
    return sorted(ext for fmt in FORMATS for ext in fmt.extensions)


def validate_image(*, data: bytes, filename: str, max_bytes: int, max_pixels: int) -> ValidatedImage:
    """Return what the file is, or raise UploadRejected naming the problem."""
    if len(data) == 0:
        raise UploadRejected("empty_file", "the file is empty")
    if len(data) > max_bytes:
        raise UploadRejected("file_too_large", f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes")
    fmt = next((f for f in FORMATS if f.sniff(data)), None)
    if fmt is None:
        names = ", ".join(f.name for f in FORMATS)
        raise UploadRejected("unsupported_type", f"the content is not an accepted image type ({names})")
    extension = PurePath(filename).suffix.lower()
    if extension not in fmt.extensions and not (extension == "" and fmt.allow_no_extension):
        shown = extension or "no extension"
        raise UploadRejected(
            "extension_mismatch",
            f"the file name says {shown!s} but the content is {fmt.name}; rename it or check the file",
        )
    return fmt.check(data, max_pixels)
