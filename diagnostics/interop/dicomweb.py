"""DICOMweb STOW-RS messages (DICOM PS3.18 10.5): the multipart/related request body
and the JSON response with its per-instance failure reasons. No Django imports.

Failure reasons are the DIMSE status codes PS3.18 names for STOW-RS (Table 10.5.3-3,
from PS3.4 Annex B): a sender's PACS shows them as it would for a C-STORE.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import pydicom

# PS3.4 B.2.3 / PS3.18 10.5.3: the codes a STOW-RS origin server reports.
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124

# CancerWeb's refusal codes (diagnostics/intake) mapped to the DICOM failure reason.
FAILURE_REASONS: dict[str, int] = {
    "too_large": OUT_OF_RESOURCES,
    "too_many_pixels": OUT_OF_RESOURCES,
    "too_many_files": OUT_OF_RESOURCES,
    "storage_unavailable": OUT_OF_RESOURCES,
    "dicom_unsupported_transfer_syntax": TRANSFER_SYNTAX_NOT_SUPPORTED,
    "dicom_no_pixel_data": SOP_CLASS_NOT_SUPPORTED,
    "dicom_unsupported_pixels": SOP_CLASS_NOT_SUPPORTED,
    "corrupt_image": CANNOT_UNDERSTAND,
    "unsupported_type": CANNOT_UNDERSTAND,
    "dicom_executable_preamble": CANNOT_UNDERSTAND,
    "empty_file": CANNOT_UNDERSTAND,
    "study_mismatch": DATASET_DOES_NOT_MATCH_SOP_CLASS,
}


def failure_reason(code: str) -> int:
    return FAILURE_REASONS.get(code, PROCESSING_FAILURE)


class MultipartError(ValueError):
    """The body is not a usable multipart/related message; ``code`` for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_PARAM = re.compile(r';\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def content_type_params(header: str) -> tuple[str, dict[str, str]]:
    """('multipart/related', {'type': 'application/dicom', 'boundary': ...})."""
    media, _, rest = header.partition(";")
    params = {}
    for key, value in _PARAM.findall(";" + rest):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        params[key.lower()] = value
    return media.strip().lower(), params


def stow_boundary(content_type: str) -> str:
    """The boundary of a STOW-RS request, or MultipartError naming what is wrong."""
    media, params = content_type_params(content_type or "")
    if media != "multipart/related":
        raise MultipartError(
            "not_multipart",
            f'a STOW-RS request must be multipart/related; type="application/dicom" (got {media or "no content type"})',
        )
    part_type = params.get("type", "").lower()
    if part_type != "application/dicom":
        raise MultipartError(
            "unsupported_media_type",
            f'only type="application/dicom" parts are accepted (got {part_type or "no type"}); '
            "metadata with bulk data is not supported",
        )
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MultipartError("not_multipart", "the multipart/related content type names no boundary")
    return boundary


def split_parts(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """(part content type, part bytes) for every part of a multipart body (RFC 2046)."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("not_multipart", "the body holds no part with the declared boundary")
    parts: list[tuple[str, bytes]] = []
    pos = start
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            break  # the close delimiter
        header_end = body.find(b"\r\n\r\n", pos)
        if header_end < 0:
            raise MultipartError("not_multipart", "a part of the body has no header end")
        headers = body[pos:header_end].decode("latin-1")
        nxt = body.find(b"\r\n" + delimiter, header_end + 4)
        if nxt < 0:
            raise MultipartError("not_multipart", "the multipart body is truncated: its close delimiter is missing")
        content_type = ""
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = value.strip()
        parts.append((content_type, body[header_end + 4 : nxt]))
        pos = nxt + 2
    if not parts:
        raise MultipartError("not_multipart", "the multipart body holds no part")
    return parts


def encode_multipart(parts: list[bytes], *, boundary: str) -> bytes:
    out = io.BytesIO()
    for data in parts:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


@dataclass(frozen=True)
class OriginalIdentifiers:
    """What a received instance says about itself before de-identification: kept
    only encrypted, in the link table."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    accession_number: str = ""
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)


PATIENT_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = ("StudyDate", "StudyTime", "StudyID", "ReferringPhysicianName", "StudyDescription")


def original_identifiers(data: bytes) -> OriginalIdentifiers:
    """The identifiers of a PS3.10 file that already passed validation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)

    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    return OriginalIdentifiers(
        study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"),
        sop_instance_uid=text("SOPInstanceUID"),
        sop_class_uid=text("SOPClassUID"),
        accession_number=text("AccessionNumber"),
        patient={k: text(k) for k in PATIENT_KEYWORDS if text(k)},
        study={k: text(k) for k in STUDY_KEYWORDS if text(k)},
    )


def stow_response(
    *, stored: list[tuple[str, str]], failed: list[tuple[str, str, int]], retrieve_url: str | None = None
) -> dict[str, Any]:
    """The Store Instances Response (PS3.18 Table 10.5.3-2) in the DICOM JSON model:
    ``stored`` (SOP class, SOP instance), ``failed`` (SOP class, SOP instance, reason)."""
    response: dict[str, Any] = {}
    if retrieve_url:
        response["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    if failed:
        response["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    **({"00081150": {"vr": "UI", "Value": [cls]}} if cls else {}),
                    **({"00081155": {"vr": "UI", "Value": [uid]}} if uid else {}),
                    "00081197": {"vr": "US", "Value": [reason]},
                }
                for cls, uid, reason in failed
            ],
        }
    if stored:
        response["00081199"] = {
            "vr": "SQ",
            "Value": [
                {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [uid]}}
                for cls, uid in stored
            ],
        }
    return response


def stow_status(*, stored: int, failed: int) -> int:
    """200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3.1)."""
    if failed and not stored:
        return 409
    return 202 if failed else 200
