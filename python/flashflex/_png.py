"""A minimal PNG writer (8-bit RGB, no filtering) so BlockMask.to_png needs no imaging library."""

from __future__ import annotations

import struct
import zlib

import torch


def write_png(path: str, rgb: torch.Tensor) -> None:
    """rgb: uint8 [height, width, 3]."""
    height, width, _ = rgb.shape
    rows = torch.cat([torch.zeros((height, 1), dtype=torch.uint8), rgb.reshape(height, width * 3)], dim=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", zlib.compress(bytes(rows.contiguous().untyped_storage()), 6)))
        f.write(chunk(b"IEND", b""))
