"""The outline: how it is asked for and how the answer is read.

Format (RedInk's): pages separated by `<page>`, each starting with a tag
`[封面]` (cover), `[内容]` (content) or `[总结]` (summary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_PAGES = 2
MAX_PAGES = 18
DEFAULT_RANGE = (6, 12)

OUTLINE_SYSTEM_PROMPT = """\
你是一位小红书内容创作专家。用户给你一个主题（可能附带参考图片），你为它写一篇小红书图文笔记的逐页大纲，每一页之后会被画成一张竖版图片。

规则：
1. 第 1 页是封面：一个抓人眼球的标题和一句副标题。
2. 除非用户指定页数，总页数为 6 到 12 页（含封面）；用户指定页数时严格按该页数（2 到 18 页）。
3. 页与页之间用单独一行 <page> 分隔。
4. 每一页以标签开头：封面用 [封面]，正文用 [内容]，最后一页用 [总结]。
5. 每页内容具体、详实、可直接画成图片：写出标题和要出现在图上的文字（要点、步骤、数据、例子），不要空泛的描述。
6. 不要使用 | 字符，不要用表格。
7. 直接从封面开始输出，不要任何开场白、解释或结尾说明。
8. 使用与用户主题相同的语言写作（中文主题用中文，英文主题用英文）。
9. 如果用户提供了参考图片，结合图片中的内容和风格来写。

示例：
[封面]
标题：秋季显白美甲合集
副标题：黄皮也能闪闪发光 ✨
<page>
[内容]
1. 焦糖奶茶色
- 温柔又高级，通勤约会都合适
- 搭配细闪更显手白
<page>
[总结]
收藏这篇，下次做美甲直接给美甲师看！"""

TAGS = {"封面": "cover", "内容": "content", "总结": "summary"}
_TAG_RE = re.compile(r"^\s*[\[【]\s*(封面|内容|总结|cover|content|summary)\s*[\]】]\s*", re.I)
_PAGE_SPLIT = re.compile(r"^\s*<\s*page\s*/?\s*>\s*$|<\s*page\s*/?\s*>", re.I | re.M)
_DASH_SPLIT = re.compile(r"^\s*-{3,}\s*$", re.M)

_CN_DIGITS = {
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_COUNT_PATTERNS = [
    re.compile(r"(\d{1,3})\s*(?:页|張|张|p\b|P\b)"),
    re.compile(r"(\d{1,3})[\s-]*(?:pages?|slides?|cards?)\b", re.I),
    re.compile(
        r"(十[一二三四五六七八九]?|[一二两三四五六七八九]十?[一二三四五六七八九]?)\s*(?:页|张)"
    ),
]


@dataclass(frozen=True)
class OutlinePage:
    index: int
    type: str  # cover | content | summary
    text: str

    @property
    def title(self) -> str:
        """A short title for captions: the first meaningful line without markup."""
        for line in self.text.splitlines():
            line = re.sub(r"^(标题|副标题|title|subtitle)\s*[:：]\s*", "", line.strip(), flags=re.I)
            line = re.sub(r"^[#>*•\-\d.、\s]+", "", line).strip(" *#")
            if line:
                return line if len(line) <= 48 else line[:47].rstrip() + "…"
        return ""

    @property
    def body(self) -> str:
        lines = [ln for ln in self.text.splitlines() if ln.strip()]
        return "\n".join(lines[1:])


def _chinese_number(text: str) -> int | None:
    if not text:
        return None
    if text.startswith("十"):
        return 10 + (_CN_DIGITS.get(text[1:2], 0) if len(text) > 1 else 0)
    if "十" in text:
        tens, _, ones = text.partition("十")
        return _CN_DIGITS.get(tens, 0) * 10 + (_CN_DIGITS.get(ones, 0) if ones else 0)
    return _CN_DIGITS.get(text)


def requested_page_count(topic: str) -> int | None:
    """The page count the user asked for in the topic ("5页", "5 pages"), clamped to 2–18."""
    for pattern in _COUNT_PATTERNS:
        match = pattern.search(topic)
        if match:
            raw = match.group(1)
            value = int(raw) if raw.isdigit() else _chinese_number(raw)
            if value:
                return clamp_pages(value)
    return None


def clamp_pages(n: int) -> int:
    return max(MIN_PAGES, min(MAX_PAGES, n))


def build_outline_messages(
    topic: str, page_count: int | None = None, references: list[str] | None = None
) -> list[dict]:
    """OpenAI-form messages asking for the outline. `references` are data URLs."""
    lines = [f"Topic: {topic.strip()}"]
    if page_count:
        lines.append(f"Pages: exactly {page_count}")
    text = "\n".join(lines)
    if references:
        content: list[dict] | str = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": url}} for url in references
        ]
    else:
        content = text
    return [
        {"role": "system", "content": OUTLINE_SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]


def _clean(piece: str) -> str:
    piece = piece.replace("|", "/")
    # models sometimes wrap the answer in a code fence
    piece = re.sub(r"^```\w*\s*|\s*```$", "", piece.strip())
    return piece.strip()


def parse_outline(text: str, max_pages: int | None = None) -> list[OutlinePage]:
    """Split an outline answer into pages.

    `<page>` (any case) separates pages, else `---` lines. Empty pieces are
    dropped; indices are contiguous from 0; the type comes from the tag (an
    unknown or missing tag means content); the cover is the page tagged cover,
    else page 0; pages past `max_pages` are dropped.
    """
    pieces = _PAGE_SPLIT.split(text)
    if len(pieces) == 1:
        pieces = _DASH_SPLIT.split(text)
    pages: list[tuple[str, str]] = []
    for raw in pieces:
        piece = _clean(raw)
        if not piece:
            continue
        match = _TAG_RE.match(piece)
        kind = "content"
        if match:
            tag = match.group(1).lower()
            kind = TAGS.get(tag, tag)
            piece = piece[match.end() :].strip()
            if not piece:
                continue
        pages.append((kind, piece))
    if not pages:
        return []
    cover_at = next((i for i, (kind, _) in enumerate(pages) if kind == "cover"), 0)
    if cover_at != 0:
        pages.insert(0, pages.pop(cover_at))
    # exactly one cover, at index 0
    pages = [
        ("cover" if i == 0 else ("content" if k == "cover" else k), t)
        for i, (k, t) in enumerate(pages)
    ]
    if max_pages is not None:
        pages = pages[: max(1, max_pages)]
    return [OutlinePage(i, kind, body) for i, (kind, body) in enumerate(pages)]


def outline_text(pages: list[OutlinePage]) -> str:
    """The canonical outline text (stored on the post, shown to the image model)."""
    tag = {"cover": "[封面]", "content": "[内容]", "summary": "[总结]"}
    return "\n<page>\n".join(f"{tag.get(p.type, '[内容]')}\n{p.text}" for p in pages)
