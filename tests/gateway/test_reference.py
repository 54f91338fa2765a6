from __future__ import annotations

import io
import os

from PIL import Image

from gateway.cli import tune_allocator
from gateway.flow.reference import compact_reference, compact_references
from providers.base import ImageData


def _image(
    size: tuple[int, int], mode: str = "RGB", noise: bool = True, fmt: str = "PNG"
) -> ImageData:
    if noise:
        im = Image.frombytes(mode, size, os.urandom(size[0] * size[1] * len(mode)))
    else:
        im = Image.new(mode, size, (200, 100, 50, 255)[: len(mode)])
    buf = io.BytesIO()
    im.save(buf, fmt)
    return ImageData.from_bytes(buf.getvalue())


def _open(image: ImageData) -> Image.Image:
    return Image.open(io.BytesIO(image.data))


async def test_a_large_cover_becomes_a_1024px_jpeg() -> None:
    cover = _image((1080, 1440))
    assert len(cover.data) > 2_000_000
    small = await compact_reference(cover)
    assert small.mime == "image/jpeg" and len(small.data) < len(cover.data) // 4
    assert _open(small).size == (768, 1024)


async def test_small_references_are_left_alone() -> None:
    ref = _image((300, 400), noise=False)
    assert await compact_reference(ref) is ref


async def test_transparent_references_stay_png() -> None:
    ref = _image((2048, 2048), mode="RGBA")
    small = await compact_reference(ref)
    assert small.mime == "image/png" and _open(small).size == (1024, 1024)
    assert _open(small).mode == "RGBA"


async def test_unreadable_bytes_pass_through() -> None:
    broken = ImageData(b"\x89PNG\r\n\x1a\n" + b"\x00" * 600_000, "image/png")
    assert await compact_reference(broken) is broken


async def test_compact_references_keeps_order() -> None:
    refs = (_image((64, 64), noise=False), _image((1500, 1000)))
    out = await compact_references(refs)
    assert out[0] is refs[0] and _open(out[1]).size == (1024, 683)


def test_tune_allocator_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert tune_allocator() is True
