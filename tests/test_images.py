"""Image files (d2lnet.images): PNG outputs, lossless and written with a fast zlib level."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from d2lnet.images import write_image


def _first_idat(path: Path) -> bytes:
    data = path.read_bytes()
    at = 8  # after the signature: chunks of length, type, payload, CRC
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        if data[at + 4 : at + 8] == b"IDAT":
            return data[at + 8 : at + 8 + length]
        at += 12 + length
    raise AssertionError("no IDAT chunk")


def test_png_outputs_are_lossless_and_fast_to_write(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    write_image(Image.fromarray(pixels), tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), pixels)
    # The zlib header's FLEVEL (RFC 1950: bits 6-7 of FLG) is 1, "fast", for levels 2 to 5;
    # Pillow's default level 6 would write 2.
    cmf, flg = _first_idat(tmp_path / "out.png")[:2]
    assert cmf & 0x0F == 8 and flg >> 6 == 1
