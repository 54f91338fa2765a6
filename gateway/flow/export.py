"""The downloads of a post: a ZIP of the pages, a PDF, and one long image.

Every function here is synchronous and CPU-bound (Pillow, zlib): callers run
them in a worker thread (`anyio.to_thread.run_sync`), never on the event loop.
Pages arrive as encoded image bytes in page order; an empty list of pages, or
bytes that are not an image, raise `ValueError`.

PDF: Pillow's PDF writer embeds an RGB page as a JPEG stream (`/DCTDecode`) and
an RGBA page as JPEG 2000 with its alpha channel, which many viewers handle
poorly; so every page is flattened to RGB first.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

from PIL import ExifTags, Image, ImageOps, PdfParser, UnidentifiedImageError

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
JPEG_QUALITY = 90
# A page of N pixels is N / PDF_DPI inches wide: 1080 px -> 7.5 in (540 pt).
PDF_DPI = 144
LONG_MAX_WIDTH = 1080
# libjpeg refuses any side longer than this (JPEG_MAX_DIMENSION).
JPEG_MAX_SIDE = 65500
# Progressive/optimized JPEG needs whole-image buffers in Pillow and libjpeg (about
# 2 bytes a pixel more): worth it for a normal post, not for a 1080 x 65,500 stack.
PROGRESSIVE_MAX_PIXELS = 32_000_000
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height

# UnidentifiedImageError and truncated data are OSErrors; a corrupt tile can be a ValueError
_DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError)


def build_zip(files: list[tuple[str, bytes]]) -> bytes:
    """A ZIP archive of `(name, data)` entries, in order.

    Entries are stored, not deflated: the images are already compressed. The
    data is not inspected; names must be unique.
    """
    if not files:
        raise ValueError("Nothing to export: the post has no images.")
    names = [name for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError("ZIP entry names must be unique.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def build_pdf(images: list[bytes], *, title: str | None = None) -> bytes:
    """A PDF with one page per image, each page the size of its image.

    Pages are sized at `PDF_DPI` (a 1080 x 1440 image is a 540 x 720 pt page)
    and embedded as JPEG at `JPEG_QUALITY`. Transparency is flattened onto
    white. `title` becomes the document title in the PDF metadata.
    """
    opened = _open_all(images)
    pages = [_flatten(_load(image, number), WHITE) for number, image in opened]
    options: dict[str, object] = {
        "save_all": True,
        "append_images": pages[1:],
        "resolution": PDF_DPI,
        # read by Pillow's JPEG encoder for every /DCTDecode page (default 75)
        "quality": JPEG_QUALITY,
    }
    if title:
        # Pillow writes a str as a literal string of raw UTF-16 bytes, where a
        # 0x0D byte (不 is U+4E0D) is an end of line that readers turn into
        # 0x0A. A hex string is read back byte for byte.
        options["title"] = PdfParser.PdfBinary(PdfParser.encode_text(title))
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", **options)
    return buffer.getvalue()


def build_long(
    images: list[bytes],
    *,
    width: int | None = None,
    gap: int = 0,
    background: Color = WHITE,
) -> tuple[bytes, str]:
    """One tall JPEG with the pages stacked top to bottom; returns (bytes, mime).

    Every page is scaled (LANCZOS, aspect kept) to a common width: `width`, or
    by default the narrowest page's width capped at `LONG_MAX_WIDTH`. Pages are
    separated by `gap` pixels of `background`, which also shows through any
    transparency. When the result would be taller than JPEG allows
    (`JPEG_MAX_SIDE`), the width and gap shrink together until it fits.
    """
    if width is not None and width < 1:
        raise ValueError(f"width must be a positive number of pixels, got {width}.")
    if gap < 0:
        raise ValueError(f"gap must not be negative, got {gap}.")
    # only the headers are read here; each page is decoded when it is pasted
    opened = _open_all(images)
    sizes = [_upright_size(image) for _, image in opened]
    wanted = width if width is not None else min(LONG_MAX_WIDTH, *(w for w, _ in sizes))
    target, scaled_gap = _fit_long(sizes, min(wanted, JPEG_MAX_SIDE), gap)

    heights = [_scaled_height(size, target) for size in sizes]
    canvas = Image.new("RGB", (target, _long_height(heights, scaled_gap)), background)
    top = 0
    for (number, image), height in zip(opened, heights, strict=True):
        # flattened before resizing: a palette image would resize with NEAREST
        page = _flatten(_load(image, number), background)
        if page.size != (target, height):
            page = page.resize((target, height), Image.Resampling.LANCZOS)
        canvas.paste(page, (0, top))
        top += height + scaled_gap
        image.close()

    buffer = io.BytesIO()
    smaller = canvas.width * canvas.height <= PROGRESSIVE_MAX_PIXELS
    canvas.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=smaller, progressive=smaller)
    return buffer.getvalue(), "image/jpeg"


def _open_all(images: Sequence[bytes]) -> list[tuple[int, Image.Image]]:
    """Each image opened (header read, pixels not decoded) with its page number."""
    if not images:
        raise ValueError("Nothing to export: the post has no images.")
    opened = []
    for number, data in enumerate(images, start=1):
        try:
            opened.append((number, Image.open(io.BytesIO(data))))
        except _DECODE_ERRORS as exc:
            raise _unreadable(number, data) from exc
    return opened


def _load(image: Image.Image, number: int) -> Image.Image:
    """`image` decoded and upright (its EXIF orientation applied)."""
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise _unreadable(number, None) from exc
    ImageOps.exif_transpose(image, in_place=True)
    return image


def _unreadable(number: int, data: bytes | None) -> ValueError:
    # the message names the page, never the bytes
    size = f" ({len(data)} bytes)" if data is not None else ""
    return ValueError(f"Page {number} is not a readable image{size}.")


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED:
        return height, width
    return width, height


def _flatten(image: Image.Image, background: Color) -> Image.Image:
    """`image` as RGB, its transparency composited onto `background`."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def _scaled_height(size: tuple[int, int], width: int) -> int:
    page_width, page_height = size
    return max(1, round(page_height * width / page_width))


def _long_height(heights: Sequence[int], gap: int) -> int:
    return sum(heights) + gap * (len(heights) - 1)


def _fit_long(sizes: Sequence[tuple[int, int]], width: int, gap: int) -> tuple[int, int]:
    """The widest (width, gap), at most the wanted ones, whose stack fits in a JPEG.

    The gap shrinks in proportion with the width, so the layout keeps its look.
    """

    def fits(w: int) -> bool:
        heights = [_scaled_height(size, w) for size in sizes]
        return _long_height(heights, gap * w // width) <= JPEG_MAX_SIDE

    if fits(width):
        return width, gap
    if not fits(1):
        raise ValueError(f"{len(sizes)} pages cannot be stacked into one JPEG image.")
    # the stacked height only grows with the width: binary search the widest fit
    low, high = 1, width - 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low, gap * low // width
