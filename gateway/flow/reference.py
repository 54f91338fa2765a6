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


def shrink(image: ImageData, side: int, *, small_enough: int | None = None) -> ImageData:
    """`image` with its long side at most `side` px: JPEG, or PNG when transparent.

    An image that already fits comes back unchanged, unless it is larger than
    `small_enough` bytes: then it is re-encoded, and kept only if that is smaller.
    Bytes Pillow cannot read come back unchanged (the provider judges them).
    """
    try:
        with Image.open(io.BytesIO(image.data)) as im:
            fits = max(im.size) <= side
            if fits and (small_enough is None or len(image.data) <= small_enough):
                return image
            im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            if has_alpha:  # JPEG has no alpha: keep PNG for transparent references
                im.save(out, "PNG", optimize=False, compress_level=6)
                shrunk = ImageData(out.getvalue(), "image/png")
            else:
                im.save(out, "JPEG", quality=88, optimize=True)
                shrunk = ImageData(out.getvalue(), "image/jpeg")
    except (UnidentifiedImageError, OSError):
        return image
    return shrunk if not fits or len(shrunk.data) < len(image.data) else image


def _shrink(image: ImageData) -> ImageData:
    return shrink(image, MAX_SIDE, small_enough=SMALL_ENOUGH)


async def compact_reference(image: ImageData) -> ImageData:
    """`image` at most 1024 px on its long side (a worker thread does the Pillow work)."""
    return await anyio.to_thread.run_sync(_shrink, image)


async def compact_references(images: tuple[ImageData, ...]) -> tuple[ImageData, ...]:
    return tuple([await compact_reference(image) for image in images])
