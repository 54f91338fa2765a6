"""Fonts for the offline card renderer: finding them, and fitting text with them.

The lookup runs once per process (results are cached) and only reads the file
system: well-known paths first, then a scan of the system font folders for files
named like CJK fonts. When nothing is installed, Pillow's built-in font is the
last resort; `covers()` and `drawable()` keep missing glyphs from becoming tofu.
Text is wrapped by measured width: per character for CJK, per word for Latin.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# (regular, bold) pairs, best first. Bold may be missing; then regular is used.
CJK_FONT_FILES: tuple[tuple[str, str], ...] = (
    (
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    ),
    (
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Bold.ttc",
    ),
    (
        "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Bold.ttc",
    ),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", ""),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", ""),
    ("/System/Library/Fonts/PingFang.ttc", ""),
)
LATIN_FONT_FILES: tuple[tuple[str, str], ...] = (
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    ),
    ("/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf"),
)
FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts", "/usr/local/share/fonts")

# File names that look like a CJK font, for the folder scan.
_CJK_NAME = re.compile(r"cjk|wqy|sourcehan|notosans[st]c|droidsansfallback", re.I)
_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # radicals
    (0x3000, 0x30FF),  # CJK punctuation, kana
    (0x3100, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),  # hangul
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),  # full-width forms
    (0x20000, 0x2FA1F),
)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def has_cjk(text: str) -> bool:
    """Whether `text` contains any CJK character (ideographs, kana, hangul, CJK punctuation)."""
    return any(is_cjk(ch) for ch in text)


@dataclass(frozen=True)
class FontFace:
    """One face in a font file; `path=None` is Pillow's built-in font."""

    path: str | None
    index: int = 0


@dataclass(frozen=True)
class FontPair:
    """The faces a card is drawn with: `regular` for body text, `bold` for titles."""

    regular: FontFace
    bold: FontFace


_local = threading.local()


def load_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """`face` at `size` pixels. Cached per thread: a FreeType face must not be shared
    between threads that render at the same time."""
    cache: dict = _local.__dict__.setdefault("fonts", {})
    key = (face, size)
    font = cache.get(key)
    if font is None:
        if len(cache) > 128:
            cache.clear()
        if face.path is None:
            font = ImageFont.load_default(size=size)
        else:
            font = ImageFont.truetype(face.path, size, index=face.index)
        cache[key] = font
    return font


def _glyph_pixels(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, char: str) -> bytes:
    image = Image.new("L", (64, 64))
    ImageDraw.Draw(image).text((8, 4), char, font=font, fill=255)
    return image.tobytes()


_coverage_lock = threading.Lock()
_coverage: dict[tuple[FontFace, str], bool] = {}


def covers(face: FontFace, char: str) -> bool:
    """Whether `face` has a real glyph for `char` (not the .notdef box)."""
    key = (face, char)
    known = _coverage.get(key)
    if known is not None:
        return known
    font = load_font(face, 32)
    # U+F0000 (supplementary private use) is in no normal font: it draws .notdef.
    missing = _glyph_pixels(font, "\U000f0000")
    result = _glyph_pixels(font, char) != missing
    with _coverage_lock:
        _coverage[key] = result
    return result


def _pick_index(path: str) -> int:
    """The face of a collection to use: Simplified Chinese when the file has one."""
    if not path.lower().endswith(".ttc"):
        return 0
    for index in range(10):
        try:
            family = ImageFont.truetype(path, 16, index=index).getname()[0] or ""
        except OSError:
            break
        if re.search(r"\bSC\b|GB", family) and "Mono" not in family:
            return index
    return 0


def _pair(regular: str, bold: str) -> FontPair:
    if not bold or not os.path.isfile(bold):
        guess = regular.replace("Regular", "Bold")
        bold = guess if guess != regular and os.path.isfile(guess) else regular
    return FontPair(FontFace(regular, _pick_index(regular)), FontFace(bold, _pick_index(bold)))


def _scan(directory: str) -> list[str]:
    found: list[str] = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.lower().endswith((".ttc", ".otf", ".ttf")) and _CJK_NAME.search(name):
                found.append(os.path.join(root, name))
    # Sans regular faces first: they read best on small cards.
    return sorted(found, key=lambda p: ("Serif" in p, "Bold" in p, "Mono" in p, p))


@functools.cache
def _find_cjk(search_paths: tuple[str, ...]) -> FontPair | None:
    for entry in search_paths:
        if os.path.isdir(entry):
            for path in _scan(entry):
                if "Bold" not in os.path.basename(path):
                    return _pair(path, "")
        elif os.path.isfile(entry):
            return _pair(entry, "")
    return None


@functools.cache
def _default_cjk_font() -> FontPair | None:
    for regular, bold in CJK_FONT_FILES:
        if os.path.isfile(regular):
            return _pair(regular, bold)
    return _find_cjk(FONT_DIRS)


def find_cjk_font(search_paths: Iterable[str] | None = None) -> FontPair | None:
    """The first CJK-capable font found, or None.

    `search_paths` are font files or folders to scan; by default the well-known
    files, then the system font folders. The answer is cached per argument, so a
    font installed while the process runs is seen after a restart.
    """
    if search_paths is None:
        return _default_cjk_font()
    return _find_cjk(tuple(search_paths))


@functools.cache
def find_latin_font() -> FontPair:
    """DejaVu Sans when installed, else Pillow's built-in font."""
    for regular, bold in LATIN_FONT_FILES:
        if os.path.isfile(regular):
            return _pair(regular, bold)
    return FontPair(FontFace(None), FontFace(None))


def font_for_path(path: str, index: int = 0) -> FontPair:
    """A forced font file (configured by the operator), used for every text."""
    face = FontFace(path, index)
    return FontPair(face, face)


# ---------------------------------------------------------------- fitting text

PLACEHOLDER = "·"
_NO_LINE_START = frozenset("，。、；：！？）》」』”’,.;:!?)…%")
_BULLET = re.compile(r"^\s*(?:[•●▪·]|[-*](?=\s))\s*")


def drawable(text: str, face: FontFace) -> str:
    """`text` without tofu: characters `face` lacks are dropped when they are symbols
    (emoji, variation selectors) and shown as "·" when they are letters."""
    out = []
    for ch in text:
        if ch == "\n" or covers(face, ch):
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch)[0] not in "SMC":
            out.append(PLACEHOLDER)
    return "".join(out)


def _tokens(text: str) -> list[str]:
    """Words with their trailing space for Latin text; single characters for CJK."""
    tokens, word = [], ""
    for ch in text:
        if is_cjk(ch) or ch == PLACEHOLDER:
            tokens += [word, ch] if word else [ch]
            word = ""
        elif ch == " ":
            if word:
                tokens.append(word + " ")
                word = ""
            elif tokens:
                tokens[-1] += " "
        else:
            word += ch
    return [*tokens, word] if word else tokens


def wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """Greedy wrap of one paragraph by measured width; a word wider than a line breaks
    anywhere, and closing punctuation never starts a line."""
    lines: list[str] = []
    line = ""
    pending = _tokens(text)[::-1]
    while pending:
        token = pending.pop()
        if len(token.rstrip()) > 1 and font.getlength(token.rstrip()) > width:
            pending.extend(reversed(token))
            continue
        if not line or font.getlength((line + token).rstrip()) <= width or token in _NO_LINE_START:
            line += token
        else:
            lines.append(line.rstrip())
            line = token
    if line.strip():
        lines.append(line.rstrip())
    return lines


def wrap_balanced(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float
) -> list[str]:
    """Like `wrap`, with the same number of lines but as even as possible (for titles:
    no single orphaned character on the last line)."""
    lines = wrap(text, font, width)
    if len(lines) < 2:
        return lines
    low, high = width / len(lines), width
    for _ in range(8):  # binary search for the narrowest width giving as many lines
        middle = (low + high) / 2
        if len(wrap(text, font, middle)) <= len(lines):
            high = middle
        else:
            low = middle
    return wrap(text, font, high)


@dataclass(frozen=True)
class Line:
    text: str
    bullet: bool = False  # the first line of a bullet item: draw a dot before it
    indented: bool = False  # part of a bullet item


@dataclass
class TextBlock:
    """Text wrapped at the font size where it fits."""

    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    size: int
    lines: list[Line]
    line_height: int
    indent: int

    @property
    def height(self) -> int:
        return len(self.lines) * self.line_height


def fit_text(
    text: str,
    face: FontFace,
    box: tuple[float, float],
    size: float,
    min_size: float,
    *,
    spacing: float = 1.5,
    bullets: bool = False,
    balance: bool = False,
) -> TextBlock:
    """Wrap `text` (lines are paragraphs) into `box` (width, height), shrinking the
    font from `size` until it fits. At `min_size` the lines that still do not fit are
    dropped and the last one kept ends with "…". Missing glyphs never become tofu
    (`drawable`). With `bullets`, "•"/"-" items are indented; with `balance`, lines
    are evened out (`wrap_balanced`)."""
    width, height = box
    size, min_size = round(size), round(min_size)
    wrapper = wrap_balanced if balance else wrap
    text = drawable(text, face)
    while True:
        font = load_font(face, size)
        indent = round(size * 1.1) if bullets else 0
        lines: list[Line] = []
        for para in text.splitlines():
            marker = _BULLET.match(para) if bullets else None
            para = para[marker.end() :].strip() if marker else para.strip()
            room = width - indent if marker else width
            for i, wrapped in enumerate(wrapper(para, font, room) if para else []):
                lines.append(Line(wrapped, bullet=bool(marker) and i == 0, indented=bool(marker)))
        block = TextBlock(font, size, lines, round(size * spacing), indent)
        if block.height <= height or size <= min_size:
            break
        size = max(min_size, int(size * 0.9))
    keep = max(1, int(height // block.line_height))
    if len(block.lines) > keep:
        last = block.lines[keep - 1]
        ellipsis = "…" if covers(face, "…") else "..."
        room = width - (indent if last.indented else 0)
        text = last.text
        while text and font.getlength(text + ellipsis) > room:
            text = text[:-1]
        if text != last.text and " " in text and not is_cjk(text[-1]):
            text = text.rsplit(" ", 1)[0]  # end Latin text on a whole word
        block.lines = [
            *block.lines[: keep - 1],
            Line(text.rstrip() + ellipsis, last.bullet, last.indented),
        ]
    return block
