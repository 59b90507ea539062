"""DICOM test files made with pydicom (nothing downloaded)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IDENTIFYING = {
    "PatientName": "Doe^Jane^Marie",
    "PatientID": "NHS-943-476-5919",
    "PatientBirthDate": "19520314",
    "PatientAddress": "12 Acacia Avenue, Springfield",
    "InstitutionName": "St Elsewhere General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20240102",
    "AccessionNumber": "ACC77881234",
    "ImageComments": "patient anxious, husband present",
}


def ct_pixels(rows: int = 64, cols: int = 48) -> np.ndarray:
    """Stored values 0..1999 so that with intercept -1024 they span -1024..975 HU."""
    return (np.arange(rows * cols).reshape(rows, cols) % 2000).astype(np.int16)


def dicom_bytes(
    *,
    pixels: np.ndarray | None = None,
    photometric: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    preamble: bytes = b"\x00" * 128,
    with_pixels: bool = True,
    identifying: bool = True,
    extra: dict[str, Any] | None = None,
    private: bool = True,
    frames: int | None = None,
    window: tuple[float, float] | None = (40.0, 400.0),
    rescale: tuple[float, float] | None = (1.0, -1024.0),
    pixel_bytes: bytes | None = None,
) -> bytes:
    """A PS3.10 CT-like file with identifying attributes, a private tag and pixels."""
    arr = ct_pixels() if pixels is None else pixels
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "CT"
    if identifying:
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
    if private:
        block = ds.private_block(0x0009, "ACME SCANNER", create=True)
        block.add_new(0x10, "LO", "operator Jane Smith, room 4")
    colour = arr.ndim == 3
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if with_pixels:
        if pixel_bytes is not None:
            ds.PixelData = pixel_bytes
            ds["PixelData"].VR = "OB"
        elif transfer_syntax == RLELossless:
            ds.compress(RLELossless, arr, encoding_plugin="pydicom")
        elif transfer_syntax == JPEGBaseline8Bit:
            from PIL import Image

            out = io.BytesIO()
            Image.fromarray(arr).save(out, format="JPEG", quality=95)
            ds.PixelData = encapsulate([out.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
            ds.LossyImageCompression = "01"
        elif transfer_syntax == ExplicitVRBigEndian:
            ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        else:
            ds.PixelData = arr.tobytes()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    ds.preamble = preamble
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
