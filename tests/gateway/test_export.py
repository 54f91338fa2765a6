from __future__ import annotations

import io
import re
import zipfile

import pytest
from PIL import ExifTags, Image, PdfParser

from gateway.flow import export
from gateway.flow.export import (
    JPEG_MAX_SIDE,
    PDF_DPI,
    build_long,
    build_pdf,
    build_zip,
)

RED = (220, 30, 30)
GREEN = (30, 180, 60)
BLUE = (40, 60, 220)


def encode(size: tuple[int, int], color, fmt: str = "PNG", mode: str = "RGB", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt, **save)
    return buffer.getvalue()


def half_transparent(size: tuple[int, int], color) -> bytes:
    """An RGBA PNG: the left half `color`, the right half fully transparent."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (size[0] // 2, size[1]), (*color, 255)), (0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def luminance_dc_step(jpeg: Image.Image) -> int:
    # libjpeg scales the standard luminance DC step of 16 by quality:
    # 3 at quality 90, 8 at Pillow's default of 75
    return jpeg.quantization[0][0]


def close_to(pixel, color, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=True))


# -- ZIP ----------------------------------------------------------------------


def test_zip_round_trips_names_and_contents_in_order():
    files = [
        ("page_01.png", encode((40, 60), RED)),
        ("page_02.jpg", encode((50, 50), GREEN, "JPEG")),
        ("page_03.webp", b"not inspected"),
    ]

    data = build_zip(files)

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["page_01.png", "page_02.jpg", "page_03.webp"]
        for name, content in files:
            assert archive.read(name) == content
            assert archive.getinfo(name).compress_type == zipfile.ZIP_STORED
        assert archive.testzip() is None


def test_zip_refuses_empty_and_duplicate_names():
    with pytest.raises(ValueError, match="no images"):
        build_zip([])
    with pytest.raises(ValueError, match="unique"):
        build_zip([("a.png", b"1"), ("a.png", b"2")])


# -- PDF ----------------------------------------------------------------------

PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
MEDIA_BOX = re.compile(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]")


def embedded_jpegs(pdf: bytes) -> list[Image.Image]:
    """Every JPEG stream in the PDF, in file order, opened with Pillow."""
    return [
        Image.open(io.BytesIO(pdf[match.start() :])) for match in re.finditer(rb"\xff\xd8\xff", pdf)
    ]


def test_pdf_has_one_page_per_image_sized_to_the_image():
    sizes = [(300, 400), (400, 300), (256, 256)]
    images = [
        encode(sizes[0], RED),
        encode(sizes[1], GREEN, "JPEG", quality=95),
        half_transparent(sizes[2], BLUE),
    ]

    pdf = build_pdf(images)

    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert len(PAGE_OBJECT.findall(pdf)) == 3
    boxes = [(float(w), float(h)) for w, h in MEDIA_BOX.findall(pdf)]
    assert boxes == [(w * 72 / PDF_DPI, h * 72 / PDF_DPI) for w, h in sizes]
    # Pillow's own reader agrees on the page tree
    assert len(PdfParser.PdfParser(buf=pdf).pages) == 3


def test_pdf_embeds_every_page_as_rgb_jpeg_with_alpha_flattened_on_white():
    sizes = [(120, 90), (64, 64), (80, 100)]
    images = [
        encode(sizes[0], RED),
        half_transparent(sizes[1], BLUE),
        encode(sizes[2], (10, 200, 10, 128), mode="RGBA"),
    ]

    pdf = build_pdf(images)

    assert pdf.count(b"/DCTDecode") == 3
    assert b"/JPXDecode" not in pdf
    assert b"/SMask" not in pdf
    pages = embedded_jpegs(pdf)
    assert [page.size for page in pages] == sizes
    assert {page.mode for page in pages} == {"RGB"}
    assert [luminance_dc_step(page) for page in pages] == [3, 3, 3]
    red, half, translucent = (page.convert("RGB") for page in pages)
    assert close_to(red.getpixel((60, 45)), RED)
    assert close_to(half.getpixel((10, 32)), BLUE)
    assert close_to(half.getpixel((54, 32)), (255, 255, 255))
    # 50% green over white
    assert close_to(translucent.getpixel((40, 50)), (132, 227, 132))


def test_pdf_title_round_trips_including_cjk():
    # 不 is U+4E0D: its UTF-16 holds a 0x0D byte, which a literal string would garble
    title = "不要错过 (秋季) 美甲"

    pdf = build_pdf([encode((50, 50), RED)], title=title)

    raw = PdfParser.PdfParser(buf=pdf).info[b"Title"]
    assert PdfParser.decode_text(bytes(raw)) == title


def test_pdf_without_title_has_no_title():
    pdf = build_pdf([encode((50, 50), RED)])

    assert b"/Title" not in pdf


# -- long image ---------------------------------------------------------------


def test_long_scales_every_page_to_the_narrowest_width_and_stacks_them():
    images = [
        encode((400, 600), RED),
        encode((200, 100), GREEN, "JPEG"),
        encode((800, 400), BLUE),
    ]

    data, mime = build_long(images)

    assert mime == "image/jpeg"
    long = Image.open(io.BytesIO(data))
    assert long.format == "JPEG"
    assert luminance_dc_step(long) == 3
    assert long.info.get("progressive") == 1
    # 600*200/400 + 100 + 400*200/800
    assert long.size == (200, 300 + 100 + 100)


def test_long_default_width_is_capped_at_1080():
    images = [encode((2000, 1000), RED), encode((1500, 3000), GREEN)]

    data, _ = build_long(images)

    assert Image.open(io.BytesIO(data)).size == (1080, 540 + 2160)


def test_long_puts_each_page_in_its_band_with_gaps_in_the_background():
    images = [encode((100, 100), RED), encode((200, 400), GREEN), encode((50, 25), BLUE)]

    data, _ = build_long(images, width=100, gap=20, background=(0, 0, 0))

    long = Image.open(io.BytesIO(data)).convert("RGB")
    # bands: red 0-99, gap 100-119, green 120-319, gap 320-339, blue 340-389
    assert long.size == (100, 100 + 20 + 200 + 20 + 50)
    assert close_to(long.getpixel((50, 50)), RED)
    assert close_to(long.getpixel((50, 110)), (0, 0, 0))
    assert close_to(long.getpixel((50, 130)), GREEN)
    assert close_to(long.getpixel((50, 310)), GREEN)
    assert close_to(long.getpixel((50, 330)), (0, 0, 0))
    assert close_to(long.getpixel((50, 365)), BLUE)


def test_long_flattens_alpha_onto_the_background():
    data, _ = build_long([half_transparent((100, 100), RED)], background=(0, 0, 255))

    long = Image.open(io.BytesIO(data)).convert("RGB")
    assert close_to(long.getpixel((20, 50)), RED)
    assert close_to(long.getpixel((80, 50)), (0, 0, 255))


def test_long_applies_exif_orientation():
    # stored landscape, left half red and right half green; orientation 6 shows
    # it turned 90° clockwise: portrait, red on top
    stored = Image.new("RGB", (200, 100), GREEN)
    stored.paste(RED, (0, 0, 100, 100))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes())

    data, _ = build_long([buffer.getvalue(), encode((100, 100), BLUE)])

    long = Image.open(io.BytesIO(data)).convert("RGB")
    assert long.size == (100, 200 + 100)
    assert close_to(long.getpixel((80, 50)), RED)
    assert close_to(long.getpixel((20, 150)), GREEN)
    assert close_to(long.getpixel((50, 250)), BLUE)


def test_long_taller_than_jpeg_allows_is_scaled_down_to_fit():
    # at the natural width of 100 this would be 3 * 30,000 + 2 * 10 px tall
    images = [encode((100, 30_000), color, "PNG") for color in (RED, GREEN, BLUE)]

    data, _ = build_long(images, gap=10)

    long = Image.open(io.BytesIO(data))
    width, height = long.size
    assert height <= JPEG_MAX_SIDE
    # the widest width that fits: 72 px -> 3 * 21,600 + 2 * 7 = 64,814; 73 px would not fit
    assert (width, height) == (72, 3 * 21_600 + 2 * 7)
    long.load()
    assert close_to(long.convert("RGB").getpixel((36, 21_600 + 7 + 10_000)), GREEN)


def test_long_is_baseline_jpeg_beyond_the_progressive_limit(monkeypatch):
    monkeypatch.setattr(export, "PROGRESSIVE_MAX_PIXELS", 100 * 100 - 1)

    data, _ = build_long([encode((100, 100), RED)])

    long = Image.open(io.BytesIO(data))
    assert long.size == (100, 100)
    assert "progressive" not in long.info


def test_long_never_gets_wider_than_jpeg_allows():
    data, _ = build_long([encode((1000, 2), RED)], width=100_000)

    assert Image.open(io.BytesIO(data)).size == (JPEG_MAX_SIDE, 131)


@pytest.mark.parametrize(("options", "message"), [({"width": 0}, "width"), ({"gap": -1}, "gap")])
def test_long_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        build_long([encode((10, 10), RED)], **options)


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_pdf, build_long])
def test_empty_list_is_refused(build):
    with pytest.raises(ValueError, match="no images"):
        build([])


@pytest.mark.parametrize("build", [build_pdf, build_long])
def test_garbage_bytes_are_refused_naming_the_page(build):
    images = [encode((10, 10), RED), b"<html>definitely not an image</html>"]

    with pytest.raises(ValueError, match="Page 2 is not a readable image") as caught:
        build(images)

    assert "html" not in str(caught.value)


@pytest.mark.parametrize("build", [build_pdf, build_long])
def test_truncated_image_is_refused(build):
    truncated = encode((300, 300), RED, "JPEG")[:200]

    with pytest.raises(ValueError, match="Page 1 is not a readable image"):
        build([truncated])
