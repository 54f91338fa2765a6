"""Reference images as the image model receives them: at most 1024 px, compact.

The cover goes with every other page of a post (and the user's references with
every call), so it is made small once per post instead of re-uploading a multi-MB
PNG fifteen times. A style reference needs no more than 1024 px; RedInk also
compresses references before sending them.
"""

from __future__ import annotations

import io

import anyio
from PIL import Image, UnidentifiedImageError

from providers.base import ImageData

MAX_SIDE = 1024
SMALL_ENOUGH = 400 * 1024


def _shrink(image: ImageData) -> ImageData:
    try:
        with Image.open(io.BytesIO(image.data)) as im:
            if len(image.data) <= SMALL_ENOUGH and max(im.size) <= MAX_SIDE:
                return image
            im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
            im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            if has_alpha:  # JPEG has no alpha: keep PNG for transparent references
                im.save(out, "PNG", optimize=False, compress_level=6)
                shrunk = ImageData(out.getvalue(), "image/png")
            else:
                im.save(out, "JPEG", quality=88, optimize=True)
                shrunk = ImageData(out.getvalue(), "image/jpeg")
    except (UnidentifiedImageError, OSError):
        return image  # not for us to judge: the provider gets the original
    return shrunk if len(shrunk.data) < len(image.data) else image


async def compact_reference(image: ImageData) -> ImageData:
    """`image` at most 1024 px on its long side (a worker thread does the Pillow work)."""
    return await anyio.to_thread.run_sync(_shrink, image)


async def compact_references(images: tuple[ImageData, ...]) -> tuple[ImageData, ...]:
    return tuple([await compact_reference(image) for image in images])
