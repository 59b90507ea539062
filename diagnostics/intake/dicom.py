"""DICOM: validation, rendering to 8-bit RGB, and de-identification. No Django imports.

Validation decides from the bytes (PS3.10 file with ``DICM`` at offset 128) before
pydicom parses the data set, so the transfer syntax is known first: a deflated data
set (a zip bomb in DICOM clothing) or a codec we do not ship is refused without
decoding. Pixels are bounded by rows x columns x frames before any decode.

De-identification follows the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile by the strictest reading: instead of deleting the profile's
tags one by one, the output is built from an allowlist of the attributes needed to
show the pixels (image pixel, modality rescale and VOI window modules). Every
attribute the profile removes, blanks or replaces (names, IDs, dates, times,
addresses, institution and physician data, free-text comments, device identifiers,
private tags, overlays, curves, sequences) is therefore absent unless listed below.
UIDs are replaced by ``2.25`` UIDs derived with a keyed hash, so the same original
gives the same replacement (a repeated upload is still recognised) but the original
cannot be recovered. Patient Name and Patient ID carry only the pseudonymous case
reference. Burned In Annotation is kept as a flag: text burnt into the pixels
cannot be removed by editing tags, so a physician is warned instead.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
import pydicom.config
import pydicom.multival
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info  # the file meta group alone, before the data set
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from core.exceptions import ApplicationError

# pydicom's warnings can quote element values (names, IDs); nothing clinical may
# reach the logs, so its logger is silenced and invalid values are not reported.
_pydicom_logger = logging.getLogger("pydicom")
_pydicom_logger.setLevel(logging.CRITICAL + 1)  # children ("pydicom.pixels...") inherit it
_pydicom_logger.propagate = False
_pydicom_logger.disabled = True
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE

DICOM_PREFIX_OFFSET = 128

# Uncompressed and RLE are decoded by pydicom itself, baseline JPEG by Pillow. Deflated
# data sets are refused on purpose: inflating them is unbounded before any limit applies.
SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {
    ImplicitVRLittleEndian: "Implicit VR Little Endian",
    ExplicitVRLittleEndian: "Explicit VR Little Endian",
    ExplicitVRBigEndian: "Explicit VR Big Endian",
    RLELossless: "RLE Lossless",
    JPEGBaseline8Bit: "JPEG Baseline",
}
UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}

# Headers of executables, scripts and archives. PS3.10 lets the 128-byte preamble hold
# anything (it exists for TIFF dual-personality files), but a file that is at once a
# DICOM image and a Windows/Linux/macOS program or script is a polyglot attack in a
# hospital, so it is refused. The stored copy always gets an all-zero preamble.
EXECUTABLE_PREAMBLES: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable (MZ)"),
    (b"\x7fELF", "a Linux executable (ELF)"),
    (b"\xfe\xed\xfa\xce", "a macOS executable (Mach-O)"),
    (b"\xfe\xed\xfa\xcf", "a macOS executable (Mach-O)"),
    (b"\xce\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xca\xfe\xba\xbe", "a Java class or macOS universal binary"),
    (b"#!", "a script (#!)"),
    (b"PK\x03\x04", "a zip archive"),
)

# Kept in the de-identified file: what rendering the pixels needs, nothing that
# identifies a person, place, device or time (the tests check it against every
# attribute the PS3.15 Annex E basic profile removes, blanks or replaces).
KEPT_KEYWORDS: frozenset[str] = frozenset(
    {
        "SpecificCharacterSet",
        "ImageType",
        "SOPClassUID",
        "Modality",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "PixelSpacing",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelPaddingValue",
        "BurnedInAnnotation",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "PixelData",
    }
)

DEIDENTIFICATION_METHOD = "DICOM PS3.15 Annex E Basic Profile (allowlist); CancerWeb"


class DicomRejected(ApplicationError):
    """Refused DICOM: ``code`` for clients, ``message`` for people (never a tag value)."""


@dataclass(frozen=True)
class DicomInfo:
    width: int
    height: int
    frames: int
    burned_in_annotation: bool


def sniff(data: bytes) -> bool:
    return len(data) >= DICOM_PREFIX_OFFSET + 4 and data[DICOM_PREFIX_OFFSET : DICOM_PREFIX_OFFSET + 4] == b"DICM"


def _parse(data: bytes) -> Dataset:
    """The data set of a PS3.10 file whose transfer syntax we support, or DicomRejected."""
    preamble = data[:DICOM_PREFIX_OFFSET]
    for magic, what in EXECUTABLE_PREAMBLES:
        if preamble.startswith(magic):
            raise DicomRejected(
                "dicom_executable_preamble",
                f"the DICOM preamble holds {what}; files that are also programs are refused",
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp = io.BytesIO(data)
            fp.seek(DICOM_PREFIX_OFFSET + 4)
            meta = _read_file_meta_info(fp)
            syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise DicomRejected("corrupt_image", "the DICOM file meta header is damaged or truncated") from exc
    if not syntax:
        raise DicomRejected("corrupt_image", "the DICOM file meta header names no transfer syntax")
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        name = UID(syntax).name if UID(syntax).is_valid else "an unknown one"
        supported = ", ".join(SUPPORTED_TRANSFER_SYNTAXES.values())
        raise DicomRejected(
            "dicom_unsupported_transfer_syntax",
            f"the DICOM transfer syntax ({name}) is not supported; accepted: {supported}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # defer_size keeps large values (the pixel data) unread until asked for.
            return pydicom.dcmread(io.BytesIO(data), force=False, defer_size=None)
    except Exception as exc:
        raise DicomRejected("corrupt_image", "the DICOM data set is damaged or truncated") from exc


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise DicomRejected("corrupt_image", f"the DICOM file has no {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomRejected("corrupt_image", f"the DICOM {keyword} is not a number") from exc


def inspect(data: bytes, *, max_pixels: int) -> tuple[Dataset, DicomInfo]:
    """Parse and check everything short of decoding pixels; raise DicomRejected."""
    ds = _parse(data)
    if "PixelData" not in ds:
        kind = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        detail = " (floating-point pixel data is not supported)" if kind else ""
        raise DicomRejected("dicom_no_pixel_data", f"the DICOM file holds no image pixel data{detail}")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", 1)
    if rows < 1 or cols < 1 or frames < 1:
        raise DicomRejected("corrupt_image", "the DICOM image has no pixels")
    if rows * cols * frames > max_pixels:
        raise DicomRejected(
            "too_many_pixels",
            f"the DICOM image is {cols}×{rows}×{frames} frame(s) = {rows * cols * frames:,} pixels; "
            f"the limit is {max_pixels:,}",
        )
    samples = _int(ds, "SamplesPerPixel", 1)
    bits = _int(ds, "BitsAllocated")
    # Echoed in the refusal message: a CS value is at most 16 characters.
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()[:16]
    if samples not in (1, 3) or bits not in (8, 16) or photometric not in PHOTOMETRIC:
        raise DicomRejected(
            "dicom_unsupported_pixels",
            f"the DICOM pixels ({samples} sample(s), {bits} bits, {photometric or 'no photometric interpretation'}) "
            "are not supported; accepted: greyscale or RGB, 8 or 16 bits",
        )
    if (samples == 1) != photometric.startswith("MONOCHROME"):
        raise DicomRejected("corrupt_image", "the DICOM samples per pixel contradict its photometric interpretation")
    raw = ds.get_item("PixelData")
    declared = getattr(raw, "length", None)
    if declared is not None and declared != 0xFFFFFFFF and len(ds.PixelData) < declared:
        # pydicom reads what is there; a length that runs past the end is a lie or a truncation.
        raise DicomRejected(
            "corrupt_image", "the DICOM pixel data is truncated: it declares more bytes than the file holds"
        )
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in UNCOMPRESSED:
        # The declared geometry must be backed by bytes: a short pixel element is a
        # truncated file, refused here rather than in the worker.
        # YBR_FULL_422 stores two samples per pixel (chroma shared by pixel pairs).
        per_pixel = 2 if photometric == "YBR_FULL_422" else samples
        expected = rows * cols * frames * per_pixel * (bits // 8)
        if len(ds.PixelData) < expected:
            raise DicomRejected("corrupt_image", "the DICOM pixel data is shorter than its rows × columns × frames")
    burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    return ds, DicomInfo(width=cols, height=rows, frames=frames, burned_in_annotation=burned_in)


def _frame(ds: Dataset, index: int) -> np.ndarray:
    from pydicom.pixels.utils import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A JPEG frame may declare far more pixels than Rows x Columns: Pillow's
            # bomb guard must stop it before it allocates.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return pixel_array(ds, index=index)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DicomRejected("too_many_pixels", "a DICOM frame declares more pixels than allowed") from exc
    except Exception as exc:  # decoders raise many types for damaged data
        raise DicomRejected("corrupt_image", "the DICOM pixel data is damaged and cannot be decoded") from exc


def _window(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """Greyscale after the modality rescale to 8 bits with the VOI window (linear,
    PS3.3 C.11.2.1.2), or the frame's min/max when the file gives no usable window."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        c = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        c = w = float("nan")
    if not (np.isfinite(c) and np.isfinite(w) and w >= 1):
        lo, hi = float(values.min()), float(values.max())
        c, w = (lo + hi) / 2 + 0.5, max(hi - lo, 0.0) + 1
    if w <= 1:
        return np.where(values > c - 0.5, 255, 0).astype(np.uint8)
    # In place, in float32: a 16-megapixel CT frame must not need several float64 copies.
    values -= c - 0.5
    values *= 255.0 / (w - 1)
    values += 127.5
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def render_frame(ds: Dataset, index: int = 0) -> Image.Image:
    """One frame as an 8-bit RGB Pillow image: modality rescale (slope/intercept),
    VOI window, MONOCHROME1 inverted so that bone is white on every modality."""
    from pydicom.pixels.processing import apply_modality_lut

    arr = _frame(ds, index)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if arr.dtype != np.uint8:  # 16-bit colour: scale, no window applies to colour
            top = float(arr.max()) or 1.0
            arr = (arr.astype(np.float32) * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(arr, ds).astype(np.float32)
    else:  # the rescale alone, in float32 (pydicom's version works in float64)
        values = arr.astype(np.float32)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope not in (None, "") and float(slope) != 1.0:
            values *= float(slope)
        if intercept not in (None, "") and float(intercept) != 0.0:
            values += float(intercept)
    grey = _window(ds, values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey, mode="L").convert("RGB")


def check(data: bytes, *, max_pixels: int) -> DicomInfo:
    """Validate a DICOM upload completely: every frame decodes and the first renders."""
    try:
        with warnings.catch_warnings():
            # pydicom converts elements lazily and warns about odd ones; nothing to log.
            warnings.simplefilter("ignore")
            ds, info = inspect(data, max_pixels=max_pixels)
            for _ in ds.iterall():  # convert every element now: de-identification reads them all
                pass
            if ds.file_meta.TransferSyntaxUID not in UNCOMPRESSED:
                for index in range(1, info.frames):
                    _frame(ds, index)
            render_frame(ds, 0)
    except (DicomRejected, MemoryError):
        raise
    except Exception as exc:
        # pydicom converts values lazily, so a damaged element (an unknown VR, a number
        # that is not one) can surface at any access; whatever it is, the file is damaged.
        raise DicomRejected("corrupt_image", "the DICOM data set is damaged and cannot be read") from exc
    return info


def decode_rgb_image(data: bytes) -> Image.Image:
    """The first frame of a stored (already validated) DICOM file as RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return render_frame(_parse(data), 0)


def _replacement_uid(original: str, secret: bytes) -> str:
    # 2.25 UIDs are derived from a 128-bit integer (PS3.5 B.2); a keyed hash keeps the
    # mapping stable per installation without letting anyone reverse it.
    digest = hmac.new(secret, original.encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def deidentify(data: bytes, *, pseudonym: str, uid_secret: bytes) -> bytes:
    """A new PS3.10 file with only the allowlisted attributes, the pseudonym as
    Patient Name/ID, keyed replacement UIDs and a zero preamble."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _deidentify(data, pseudonym=pseudonym, uid_secret=uid_secret)


def _deidentify(data: bytes, *, pseudonym: str, uid_secret: bytes) -> bytes:
    source = _parse(data)
    out = Dataset()
    for keyword in sorted(KEPT_KEYWORDS):
        if keyword in source:
            element = source[source.data_element(keyword).tag]  # type: ignore[union-attr]  # present: checked above
            out.add(element)
    out.PatientName = pseudonym
    out.PatientID = pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = Sequence([code])
    out.LongitudinalTemporalInformationModified = "REMOVED"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        original = str(source.get(keyword, "") or f"missing-{keyword}")
        setattr(out, keyword, _replacement_uid(original, uid_secret))
    if "SOPClassUID" not in out:
        out.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
    out.file_meta = meta
    out.preamble = b"\x00" * DICOM_PREFIX_OFFSET
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True, implicit_vr=None, little_endian=None)
    return buffer.getvalue()
