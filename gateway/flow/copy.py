"""Post copy: the titles, body and hashtags published with the images.

RedInk asks the text model for them after the outline (`backend/services/content.py`
with `backend/prompts/content_prompt.txt`) as one JSON object
`{"titles": [...], "copywriting": "...", "tags": [...]}`; the prompt keeps that
shape. Models wrap JSON in fences and prose, so `parse_copy` reads it leniently
and cleans what it finds.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

# The offline provider recognises the task by this marker (providers/local.py).
COPY_TASK_MARKER = "[inkgate:post_copy]"

MAX_TITLES = 5
MAX_TAGS = 12
# The prompt asks for ≤ 20 characters (Xiaohongshu's title limit). A slightly longer
# title is kept whole for the user to trim; only runaway text is cut.
TITLE_MAX_CHARS = 40
TAG_MAX_CHARS = 20  # longer "tags" are sentences: dropped, not cut
BODY_MAX_CHARS = 1000  # Xiaohongshu's limit for a note's text

COPY_SYSTEM_PROMPT = f"""\
{COPY_TASK_MARKER}
你是一位小红书爆款内容专家。用户给你一篇图文笔记的主题（Topic）和逐页大纲（Outline），你为它写发布时用的标题、正文和标签。

只输出一个 JSON 对象，不要 markdown 代码块，不要任何开场白或解释，格式如下：
{{"titles": ["标题1", "标题2", "标题3"], "copywriting": "正文", "tags": ["标签1", "标签2", "标签3", "标签4", "标签5"]}}

标题（titles）：
1. 3 个备选标题，第一个是主推标题，最吸引眼球。
2. 每个标题不超过 20 个字。
3. 使用爆款标题技巧：数字、疑问、惊叹、对比、痛点；可以用 1 个 emoji。

正文（copywriting）：
1. 200 到 500 字，第一句就要抓住读者（hook）。
2. 分段清晰，每段 1 到 3 行，段与段之间空一行；JSON 字符串里的换行写成 \\n。
3. 小红书语气：亲切、真诚、接地气；用 emoji 点缀（如 ✅ 📌 💡 👇），不要过度。
4. 内容基于大纲，不要编造大纲里没有的数据。
5. 结尾加一句互动引导（如：你还有什么好办法？评论区聊聊👇）。
6. 纯文本，不要 markdown（不要 #、**、- 列表），不要把标签写进正文。

标签（tags）：
1. 5 到 10 个，第一个是最重要的主标签。
2. 热门大词、精准长尾词和内容关键词搭配。
3. 不要加 # 号，标签里不要有空格。

使用与用户主题相同的语言写作（中文主题用中文，英文主题用英文）。

示例（主题：秋季显白美甲）：
{{"titles": ["黄皮闭眼入！秋季显白美甲合集💅", "秋天做什么颜色的美甲最显白？", "做了10次美甲总结的显白色号"], "copywriting": "黄皮姐妹做美甲总是越做越黑？这篇真的能救你😭\\n\\n试了一整个秋天，挑出最显白的几个色系：\\n\\n✅ 焦糖奶茶色：温柔又高级，通勤约会都合适\\n✅ 酒红色：秋冬氛围感拉满，显手白一个度\\n\\n💡 小技巧：加一点细闪，手会显得更白更细长\\n\\n你最近做的是什么颜色？评论区晒出来👇", "tags": ["美甲", "秋季美甲", "显白美甲", "黄皮美甲", "美甲分享", "氛围感美甲"]}}"""


@dataclass
class PostCopy:
    """What is published with the images: title options (the first is the pick),
    the note's body and hashtags without '#'."""

    titles: list[str]
    body: str
    tags: list[str]

    def to_json(self) -> str:
        """Stored in a Text column; read back with `from_json`."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> PostCopy:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("stored post copy is not a JSON object")
        return cls(
            titles=[str(t) for t in data.get("titles") or []],
            body=str(data.get("body") or ""),
            tags=[str(t) for t in data.get("tags") or []],
        )

    def markdown(self, lang: str = "zh") -> str:
        """A section for the end of a chat answer. `lang` "zh…" gives Chinese labels,
        anything else English. Single line breaks of the body are kept as Markdown
        hard breaks so the Xiaohongshu layout survives rendering."""
        zh = lang.lower().startswith("zh")
        heading, titles_label, body_label, tags_label = (
            ("发布文案", "标题", "正文", "标签")
            if zh
            else ("Post copy", "Titles", "Body", "Hashtags")
        )
        parts = [f"### {heading}"]
        if self.titles:
            numbered = "\n".join(f"{i}. {title}" for i, title in enumerate(self.titles, 1))
            parts.append(f"**{titles_label}**\n{numbered}")
        if self.body:
            parts.append(f"**{body_label}**\n{_hard_breaks(self.body)}")
        if self.tags:
            parts.append(f"**{tags_label}**\n" + " ".join(f"#{tag}" for tag in self.tags))
        return "\n\n".join(parts)


def _hard_breaks(text: str) -> str:
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        continues = i + 1 < len(lines) and line.strip() and lines[i + 1].strip()
        out.append(line + "  " if continues else line)
    return "\n".join(out)


def build_copy_messages(topic: str, outline: str) -> list[dict]:
    """OpenAI-form messages asking for the post copy of `topic` with `outline`."""
    topic = " ".join(topic.split())
    return [
        {"role": "system", "content": COPY_SYSTEM_PROMPT},
        {"role": "user", "content": f"Topic: {topic}\n\nOutline:\n{outline.strip()}"},
    ]


# ------------------------------------------------------------- reading answers

_FENCE = re.compile(r"```[\w-]*[ \t]*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_MAX_SCAN = 200_000  # a model answer longer than this is not worth scanning
_MAX_STARTS = 64  # candidate "{" positions tried, so scanning stays linear-ish


def find_json_object(answer: str, *, allow_list: bool = False) -> Any:
    """The first JSON object in a model's answer: the whole answer, else a fenced
    block, else the first `{` that starts a valid object (prose around it is fine).
    Trailing commas are forgiven. With `allow_list`, an array of objects is accepted
    too. Raises ValueError when there is none."""

    def wanted(value: Any) -> bool:
        if isinstance(value, dict):
            return True
        return allow_list and isinstance(value, list) and all(isinstance(v, dict) for v in value)

    text = answer.strip()[:_MAX_SCAN]
    candidates = [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    variants = (text, _TRAILING_COMMA.sub(r"\1", text))
    for fix in (False, True):
        for candidate in candidates:
            try:
                value = json.loads(_TRAILING_COMMA.sub(r"\1", candidate) if fix else candidate)
            except ValueError:
                continue
            if wanted(value):
                return value
    decoder = json.JSONDecoder()
    openers = re.compile(r"[{\[]" if allow_list else r"\{")
    for scanned in variants:
        for tries, start in enumerate(openers.finditer(scanned)):
            if tries >= _MAX_STARTS:
                break
            try:
                value, _ = decoder.raw_decode(scanned, start.start())
            except ValueError:
                continue
            if wanted(value):
                return value
    raise ValueError("no JSON object found in the answer")


_TITLE_PREFIX = re.compile(
    r"^(?:\d+\s*[.、):：]\s*|(?:标题|title)\s*\d*\s*(?:[（(][^）)]*[）)])?\s*[:：]\s*)", re.I
)
_QUOTES = "\"'“”‘’「」『』"
# '#' separates tags at the start, after a space or after a CJK character ("咖啡#入门"),
# but not in "C#".
_TAG_SEPARATORS = re.compile(r"[,，、;；\n]+|(?:^|\s|(?<=[^\x00-\x7f]))[#＃]")


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if isinstance(v, str | int | float) and str(v).strip()]
    return [str(value)]


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _dedupe(items: list[str], limit: int) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out[:limit]


def _clean_title(title: str) -> str:
    title = " ".join(title.split())
    title = _TITLE_PREFIX.sub("", title).strip().strip(_QUOTES).strip()
    return _cap(title, TITLE_MAX_CHARS)


def _clean_tag(tag: str) -> str:
    words = tag.strip().lstrip("#＃").strip().split()
    if len(words) > 1:  # a hashtag ends at a space: "coffee tips" → "CoffeeTips"
        words = [w[:1].upper() + w[1:] for w in words]
    return "".join(words).strip(_QUOTES + ".。")


def _tags(value: Any) -> list[str]:
    raw: list[str] = []
    if isinstance(value, str):
        separated = bool(re.search(r"[,，、;；\n#＃]", value))
        raw = _TAG_SEPARATORS.split(value) if separated else value.split()
    else:
        for item in _strings(value):
            raw += _TAG_SEPARATORS.split(item)
    tags = [_clean_tag(tag) for tag in raw]
    return _dedupe([t for t in tags if 0 < len(t) <= TAG_MAX_CHARS], MAX_TAGS)


def _body(value: Any) -> str:
    body = "\n".join(_strings(value)) if isinstance(value, list) else str(value or "")
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" not in body and "\\n" in body:  # an answer escaped twice
        body = body.replace("\\n", "\n")
    body = re.sub(r"[ \t]+\n", "\n", body)
    body = re.sub(r"\n{3,}", "\n\n", body).strip()
    if len(body) > BODY_MAX_CHARS:
        cut = body[: BODY_MAX_CHARS - 1]
        at = cut.rfind("\n")
        body = (cut[:at] if at > BODY_MAX_CHARS // 2 else cut).rstrip() + "…"
    return body


def _first_key(data: dict, *keys: str) -> Any:
    lowered = {str(k).lower(): v for k, v in data.items()}
    return next((lowered[k] for k in keys if lowered.get(k)), None)


def parse_copy(answer: str) -> PostCopy:
    """Read the text model's post copy.

    Accepts RedInk's keys (`titles`, `copywriting`, `tags`) and the common variants
    (`title`, `body`/`content`, `hashtags`); titles or tags given as one string; tags
    with '#'. Strips list numbering and quotes from titles, dedupes, keeps ≤ 5
    titles and ≤ 12 tags, caps lengths. Raises ValueError when the answer has no
    JSON object or neither a title nor a body.
    """
    try:
        data = find_json_object(answer)
    except ValueError:
        raise ValueError(
            "The text model's post copy is not JSON: expected "
            '{"titles": [...], "copywriting": "...", "tags": [...]}'
        ) from None
    titles_value = _first_key(data, "titles", "title", "headlines")
    if isinstance(titles_value, str):
        titles_value = titles_value.splitlines()
    titles = _dedupe([_clean_title(t) for t in _strings(titles_value)], MAX_TITLES)
    body = _body(_first_key(data, "copywriting", "body", "content", "text", "caption"))
    tags = _tags(_first_key(data, "tags", "hashtags", "topics"))
    if not titles and not body:
        raise ValueError("The text model's post copy has neither a title nor a body")
    return PostCopy(titles=titles, body=body, tags=tags)
