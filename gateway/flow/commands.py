"""Chat commands on an existing post: the next user turn in a conversation.

Common commands ("重新生成第3页", "delete page 4", "生成") are read by regular
expressions (`parse_command`); anything else goes to the text model with
`build_edit_messages`, and its JSON answer is checked by `parse_edit_answer`.
Both give a list of `Edit`s in the numbering the user used; `sequential` turns that
into edits an applier can run one after another.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from gateway.flow.copy import find_json_object

# The offline provider recognises the task by this marker (providers/local.py).
EDIT_TASK_MARKER = "[inkgate:post_edit]"
MAX_ACTIONS = 20

Op = Literal[
    "regenerate", "retry", "edit", "cover", "add", "delete", "move", "generate", "new_post"
]
OPS: tuple[str, ...] = get_args(Op)


@dataclass(frozen=True)
class Edit:
    """One change to a post.

    Pages are 1-based and numbered as the post was before the list of edits this one
    belongs to, as users say them: "删除第2、3页" is delete 2, delete 3. Use
    `sequential` to renumber for applying one edit after another.

    - `regenerate` page: redraw it, text unchanged.
    - `retry`: redraw every failed page (no page).
    - `edit` page, text: the page's new text; redraw it.
    - `cover` [text]: a new cover image; `text` is new cover text when the user gave it.
    - `add` [page], text: a new page with `text`, taking position `page`
      (1..page_count+1, so page_count+1 is the very end). `page` None means before the
      summary page when the last page is a summary, else at the end.
    - `delete` page.
    - `move` page, to: the page becomes page `to`.
    - `generate`: draw the draft outline.
    - `new_post` text: the message is a new topic, not about this post.
    """

    op: Op
    page: int | None = None
    text: str | None = None
    to: int | None = None


# ----------------------------------------------------------------- numbers

_ZH_DIGITS = dict(zip("一二三四五六七八九", range(1, 10), strict=True)) | {"两": 2}
_EN_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_EN_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()
_EN_VALUES = {w: i for i, w in enumerate(_EN_WORDS, 1)} | {
    w: i for i, w in enumerate(_EN_ORDINALS, 1)
}

_ZH_N = r"(?:\d{1,2}|[一二两三四五六七八九十]{1,3})"
_EN_WORD = r"(?:" + "|".join(sorted(_EN_VALUES, key=len, reverse=True)) + r")\b"
_EN_N = rf"(?:\d{{1,2}}(?:st|nd|rd|th)?\b|{_EN_WORD})"


def _number(raw: str) -> int | None:
    """1-based page number from digits, 一..十九/二十, English words or ordinals."""
    raw = raw.strip().lower()
    digits = re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)?", raw)
    if digits:
        return int(digits.group(1))
    if raw in _EN_VALUES:
        return _EN_VALUES[raw]
    tens, ten, ones = raw.partition("十")
    if not ten:
        return _ZH_DIGITS.get(raw) if len(raw) == 1 else None
    if (tens and tens not in _ZH_DIGITS) or (ones and ones not in _ZH_DIGITS):
        return None
    return (_ZH_DIGITS[tens] if tens else 1) * 10 + (_ZH_DIGITS[ones] if ones else 0)


_LIST_TOKEN = re.compile(
    rf"(?P<n>\d{{1,2}}(?:st|nd|rd|th)?|[一二两三四五六七八九十]{{1,3}}|\b{_EN_WORD})"
    r"|(?P<range>[-~–到至]|\bto\b|\bthrough\b|\bthru\b)",
    re.I,
)


def _page_list(span: str) -> list[int] | None:
    """Pages named in a span such as "第2、3页", "第2-4页" or "pages 2 and 3"."""
    pages: list[int] = []
    ranged = False
    for token in _LIST_TOKEN.finditer(span):
        if token.group("range"):
            ranged = bool(pages)
            continue
        value = _number(token.group("n"))
        if not value:
            return None
        if ranged and value > pages[-1] and value - pages[-1] <= 20:
            pages += range(pages[-1] + 1, value + 1)
        else:
            pages.append(value)
        ranged = False
    return list(dict.fromkeys(pages)) or None


# ----------------------------------------------------------------- patterns

# Fullwidth ASCII forms (：，！Ｐ３) read as ASCII; one character for one, so match
# positions stay valid in the original text.
_FOLD = str.maketrans({chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)} | {"　": " "})

_ZH_ONE = rf"(?:第\s*{_ZH_N}\s*[页张]|P\s*\d{{1,2}})"
_ZH_SEP = r"\s*(?:[、,/&+]|和|与|及|跟|以及|还有|[-~到至])\s*"
_ZH_PAGES = (
    rf"(?:第\s*{_ZH_N}(?:\s*[页张])?(?:{_ZH_SEP}第?\s*{_ZH_N}(?:\s*[页张])?)*"
    rf"|P\s*\d{{1,2}}(?:{_ZH_SEP}P?\s*\d{{1,2}})*)"
)
_ZH_IMAGE = r"(?:的?(?:图片?|图像|内容))?"
_EN_ONE = rf"(?:(?:the\s+)?page\s*#?\s*{_EN_N}|p\.?\s*\d{{1,2}}\b|(?:the\s+)?{_EN_N}\s+page)"
_EN_SEP = r"\s*(?:,\s*(?:and\s+)?|&|\band\b|/|-|–|\bto\b|\bthrough\b|\bthru\b)\s*"
_EN_PAGES = (
    rf"(?:(?:the\s+)?pages?\s*#?\s*{_EN_N}(?:{_EN_SEP}(?:pages?\s*)?{_EN_N})*"
    rf"|p\.?\s*\d{{1,2}}\b(?:{_EN_SEP}p?\.?\s*\d{{1,2}}\b)*"
    rf"|(?:the\s+)?{_EN_N}(?:{_EN_SEP}{_EN_N})*\s+pages?)"
)

_ACK = r"(?:好的?|好吧|行|嗯+|ok(?:ay)?|yes|sure|great|cool|nice|hmm+)"
_POLITE = (
    r"(?:请你?|麻烦你?|帮我|帮忙|给我|你?能不能|能否|可以|"
    r"could\s+you|can\s+you|would\s+you|please|pls|now)"
)
_LEAD = rf"\s*(?:{_ACK}\s*[,.!~、。]*\s*)*(?:{_POLITE}\s*)*"
_TAIL = (
    r"(?:\s*(?:一下|吧|了|呀|啊|哈|呢|好吗|好不好|可以吗|谢谢|谢啦|thanks|thank\s+you|"
    r"please|pls|now|again|for\s+me)\s*[,.!?~。]*)*\s*[,.!?~。]*\s*"
)

_ZH_REDRAW = r"(?:重新生成|重新画|重画|重绘|重做|重新做|再画|再生成|重试|刷新|重来)"
_ZH_AGAIN = r"(?:一(?:次|遍|下))?"
_ZH_DELETE = r"(?:删除|删掉|删去|删了|去掉|拿掉|不要了?)"
_ZH_EDIT = r"(?:改成|改为|换成|修改为|修改成|更改为|替换为|替换成|改写为|改写成)"
_ZH_MOVE = r"(?:移到|移动到|挪到|放到|调到|换到|移至|挪至|放在)"
_ZH_ADD = r"(?:再|新)?(?:加|添加|增加|新增|补充|插入|补|加上)\s*(?:一|1)\s*[页张]"
_ZH_BEFORE, _ZH_AFTER = r"(?:前面|之前|前)", r"(?:后面|之后|后)"
_ZH_COVER_VERB = r"(?:换|更换|重新生成|重新画|重画|重做|重新做|再来|再画|重新设计)"
_ZH_FAILED = r"(?:失败的?(?:页面?|图片?|部分|那几页|那些)?)"
_EN_REDRAW = (
    r"(?:regenerate|re-generate|redraw|re-draw|redo|re-do|remake|refresh|retry|"
    r"re-?render|rerun|re-run)"
)
_EN_FAILED = r"(?:the\s+)?(?:failed|failures)(?:\s+(?:pages|images|ones|cards))?"


Builder = Callable[[re.Match[str], str], list[Edit] | None]
_COMMANDS: list[tuple[re.Pattern[str], Builder]] = []


def _command(*patterns: str, text: bool = False) -> Callable[[Builder], Builder]:
    """Registers a builder for patterns that must match the whole message. Patterns
    with `text` end in a free-text group and get no trailing filler."""

    def register(builder: Builder) -> Builder:
        for pattern in patterns:
            tail = r"(?P<text>.+)" if text else _TAIL
            compiled = re.compile(rf"{_LEAD}(?:{pattern}){tail}", re.I | re.S)
            _COMMANDS.append((compiled, builder))
        return builder

    return register


def _text(match: re.Match[str], original: str) -> str:
    start, end = match.span("text")
    return original[start:end].strip().lstrip(":：,，。、-–").strip()


# Text after "改成" that asks for a change rather than being the change ("改成更简洁
# 一点", "change it to be shorter") goes to the text model, which can write the page.
_REQUEST_NOT_TEXT = re.compile(
    r"^(?:更|再|稍微|稍稍|英文|中文|英语|繁体|简体)|(?:一点儿?|一些|点儿)$"
    r"|^(?:be\s|more\s|less\s|something\s|shorter|longer|simpler|english|chinese)",
    re.I,
)


@_command(
    rf"{_ZH_REDRAW}\s*{_ZH_AGAIN}\s*(?P<pages>{_ZH_PAGES}){_ZH_IMAGE}",
    rf"把?\s*(?P<pages>{_ZH_PAGES}){_ZH_IMAGE}\s*{_ZH_REDRAW}\s*{_ZH_AGAIN}",
    rf"{_EN_REDRAW}\s+(?P<pages>{_EN_PAGES})",
    rf"(?:try|draw|do)\s+(?P<pages>{_EN_PAGES})\s+again",
)
def _regenerate(match: re.Match[str], original: str) -> list[Edit] | None:
    pages = _page_list(match.group("pages"))
    return [Edit("regenerate", page) for page in pages] if pages else None


@_command(
    r"重试|再试一?(?:次|下|遍)|再试试|重新试一?(?:次|下)?",
    rf"重试{_ZH_FAILED}|把?{_ZH_FAILED}(?:重试|重新生成|重画|再试一?次)",
    r"retry|try\s+again|give\s+it\s+another\s+try",
    rf"(?:retry|regenerate|redo|redraw)\s+{_EN_FAILED}|try\s+{_EN_FAILED}\s+again",
)
def _retry(match: re.Match[str], original: str) -> list[Edit] | None:
    return [Edit("retry")]


@_command(
    rf"把?\s*(?P<page>{_ZH_ONE})\s*(?:的?(?:内容|文字|文案|标题))?\s*{_ZH_EDIT}",
    rf"(?:change|set|replace|rewrite|update|edit)\s+(?P<page>{_EN_ONE})(?:'s)?"
    r"(?:\s+(?:text|content|copy))?\s+(?:to|with|as|into)\s*:?",
    rf"(?:edit\s+|on\s+)?(?P<page>{_EN_ONE})\s*[:：\-–]",
    rf"(?P<page>{_EN_ONE})\s+should\s+(?:say|read)\s*:?",
    rf"make\s+(?P<page>{_EN_ONE})\s+(?:say|read)\s*:?",
    text=True,
)
def _edit(match: re.Match[str], original: str) -> list[Edit] | None:
    page, text = _page_list(match.group("page")), _text(match, original)
    if not page or not text or _REQUEST_NOT_TEXT.search(text):
        return None
    return [Edit("edit", page[0], text=text)]


@_command(
    rf"{_ZH_COVER_VERB}\s*(?:一?[个张]|一下)?\s*(?:新的?)?\s*封面(?:图片?)?",
    rf"封面(?:图片?)?\s*{_ZH_COVER_VERB}\s*(?:一?[个张]|一下)?\s*(?:新的?)?",
    r"(?:a\s+|the\s+)?(?:another|new|different)\s+cover(?:\s+image)?",
    r"(?:change|replace|redo|re-do|regenerate|re-generate|redraw|re-draw|remake|swap|refresh)"
    r"\s+(?:the\s+)?cover(?:\s+image)?",
    r"try\s+(?:a\s+)?(?:another|new|different)\s+cover(?:\s+image)?",
)
def _cover(match: re.Match[str], original: str) -> list[Edit] | None:
    return [Edit("cover")]


@_command(
    rf"(?:在?\s*(?P<where>{_ZH_ONE})\s*的?\s*(?:(?P<before>{_ZH_BEFORE})|{_ZH_AFTER})"
    rf"|在?(?P<end>最后面?|末尾|结尾))?\s*{_ZH_ADD}",
    r"(?:add|insert)\s+(?:a|one|another|an\s+extra|one\s+more|a\s+new|an?\s+additional)\s+"
    r"(?:new\s+|extra\s+)?(?:page|slide)"
    rf"(?:\s+(?:(?P<before_en>before)|after)\s+(?P<where_en>{_EN_ONE})"
    rf"|\s+as\s+(?P<as>{_EN_ONE})|\s+at\s+the\s+(?:end|bottom))?\s*(?:[:,\-–]\s*|\s+)",
    text=True,
)
def _add(match: re.Match[str], original: str) -> list[Edit] | None:
    text = _text(match, original)
    if not text:
        return None
    groups = match.groupdict()
    where = groups.get("where") or groups.get("where_en")
    page = None
    if where:
        anchor = _page_list(where)
        if not anchor:
            return None
        before = groups.get("before") or groups.get("before_en")
        page = anchor[0] if before else anchor[0] + 1
    elif groups.get("as"):
        anchor = _page_list(groups["as"])
        page = anchor[0] if anchor else None
    return [Edit("add", page, text=text)]


@_command(
    rf"{_ZH_DELETE}\s*(?P<pages>{_ZH_PAGES}){_ZH_IMAGE}",
    rf"把?\s*(?P<pages>{_ZH_PAGES}){_ZH_IMAGE}\s*{_ZH_DELETE}",
    rf"(?:delete|remove|drop|cut)\s+(?P<pages>{_EN_PAGES})",
)
def _delete(match: re.Match[str], original: str) -> list[Edit] | None:
    pages = _page_list(match.group("pages"))
    return [Edit("delete", page) for page in pages] if pages else None


@_command(
    rf"把?\s*(?P<page>{_ZH_ONE})\s*{_ZH_MOVE}\s*(?P<to>第?\s*{_ZH_N}\s*[页张]?|P\s*\d{{1,2}})"
    rf"\s*的?\s*(?:(?P<before>{_ZH_BEFORE})|(?P<after>{_ZH_AFTER}))?(?:的?位置|那里)?",
    rf"move\s+(?P<page>{_EN_ONE})\s+(?:(?:to|into)\s+(?:the\s+)?(?:(?:page|position|slot|spot)\s*)?"
    rf"(?P<to_en>{_EN_N})|(?:(?P<before_en>before)|(?P<after_en>after))\s+(?P<anchor>{_EN_ONE}))"
    r"(?:\s+(?:position|place|slot|spot))?",
)
def _move(match: re.Match[str], original: str) -> list[Edit] | None:
    groups = match.groupdict()
    page = _page_list(groups["page"])
    to = _page_list(groups.get("to") or groups.get("to_en") or groups.get("anchor") or "")
    if not page or not to:
        return None
    source, target = page[0], to[0]
    # "before/after page 2" names a neighbour; the position depends on the direction.
    if groups.get("before") or groups.get("before_en"):
        target = target if source > target else target - 1
    elif groups.get("after") or groups.get("after_en"):
        target = target + 1 if source > target else target
    return [Edit("move", source, to=max(1, target))]


@_command(
    r"(?:就这样|没问题|确认|确定)?\s*[,，]?\s*(?:开始|确认|直接|那就|可以)?\s*"
    r"(?:生成|画图|出图|画|制作)(?:图片|图像|图|了)*",
    r"开始|就这样|确认大纲|开始生成图片",
    r"(?:(?:looks\s+good|lgtm|perfect)\s*[,.!]*\s*)?(?:generate|go|start|draw|render)"
    r"(?:\s+(?:it|them|the\s+(?:images|pages|post|cards)|images|pages|cards|ahead))*",
    r"go\s+ahead|start\s+(?:generating|drawing)|let'?s\s+go|do\s+it",
)
def _generate(match: re.Match[str], original: str) -> list[Edit] | None:
    return [Edit("generate")]


_CLAUSES = re.compile(r"\s*(?:[;；。\n]|[,，]\s*(?:然后|再)?|然后|并且|\band\s+then\b|\bthen\b)\s*")


def _parse_one(original: str) -> list[Edit] | None:
    folded = original.translate(_FOLD)
    for pattern, builder in _COMMANDS:
        match = pattern.fullmatch(folded)
        if match:
            edits = builder(match, original)
            if edits:
                return edits
    return None


def parse_command(text: str) -> list[Edit] | None:
    """The edits a message asks for, when it is one of the known commands (or several
    separated by "，" / ";" / "然后" / "then"), else None: then the text model reads it.
    A new topic ("3页的咖啡入门", "a 5 page guide to tea") is not a command."""
    text = text.strip()
    if not text or len(text) > 2000:
        return None
    edits = _parse_one(text)
    if edits is not None:
        return edits
    clauses = [c for c in _CLAUSES.split(text) if c and c.strip()]
    if len(clauses) < 2:
        return None
    combined: list[Edit] = []
    for clause in clauses:
        found = _parse_one(clause)
        if found is None:
            return None
        combined += found
    return combined


# ------------------------------------------------------------- the text model

EDIT_SYSTEM_PROMPT = f"""\
{EDIT_TASK_MARKER}
你是小红书图文笔记的编辑助手。笔记的每一页是一张图片，页码从 1 开始，第 1 页是封面；当前笔记附在本消息最后。用户发来一句话，你判断它要对这篇笔记做什么，写成操作列表。

只输出一个 JSON 对象，不要 markdown 代码块，不要任何解释：
{{"actions": [{{"op": "操作", "page": 3, "text": "文字", "to": 2}}]}}
每个操作只写它需要的字段。

可用的操作（op）：
- regenerate：文字不变，重新画第 page 页。
- retry：重新生成所有失败的页面，不写 page。
- edit：把第 page 页的文字换成 text，并重新画这一页。
- cover：重新画封面；用户给了新的封面文字时写进 text。
- add：新增一页，text 是新页的文字；page 是新页的位置（新页成为第 page 页，原来的第 page 页及之后的页往后移；page 为总页数加 1 表示放在最后）；不写 page 表示放在总结页之前。
- delete：删除第 page 页。
- move：把第 page 页移到第 to 页的位置。
- generate：用户确认大纲，开始画图（如"生成""开始吧""没问题，画吧"）。
- new_post：用户的话与这篇笔记无关，是一个新主题；text 写用户的原话。

规则：
1. 所有页码都按修改之前的当前笔记计算，和用户说的页码一致；不要先删除某页再修改它。
2. 一句话涉及多页时输出多个操作，一次最多 20 个。
3. 用户提修改意见时（如"第2页写详细一点""语气活泼一些"），用 edit，在 text 里直接写出改好的整页文字：与原文语言相同，保持原来的格式（第一行是标题，后面是要点），不要 [封面] 之类的标签，不要使用 | 字符。
4. 修改涉及所有页面时，为每一页各输出一个 edit。
5. add 的 text 也写成完整的一页（标题加要点）。
6. 拿不准用户是不是在说这篇笔记时，用 new_post。

示例（笔记共 6 页）：
用户：第3页删掉，再把最后一页移到第2页
{{"actions": [{{"op": "delete", "page": 3}}, {{"op": "move", "page": 6, "to": 2}}]}}
用户：帮我写一篇关于露营装备的笔记
{{"actions": [{{"op": "new_post", "text": "帮我写一篇关于露营装备的笔记"}}]}}"""

_PAGE_TAGS = {"cover": "封面", "content": "内容", "summary": "总结"}


def build_edit_messages(
    instruction: str, topic: str, pages: Sequence[tuple[str, str]]
) -> list[dict]:
    """OpenAI-form messages asking the text model what `instruction` does to the post.
    `pages` are (type, text) in order. The post goes into the system message so the
    user message is the instruction exactly as the user wrote it."""
    post = [f"当前笔记\n主题：{' '.join(topic.split())}\n共 {len(pages)} 页"]
    for number, (kind, text) in enumerate(pages, 1):
        post.append(f"=== 第{number}页 [{_PAGE_TAGS.get(kind, '内容')}] ===\n{text.strip()}")
    return [
        {"role": "system", "content": EDIT_SYSTEM_PROMPT + "\n\n" + "\n\n".join(post)},
        {"role": "user", "content": instruction.strip()},
    ]


_MESSAGES = {
    "zh": {
        "not_json": "没能理解这条修改，请换个说法再试，例如“重新生成第3页”“第2页改成……”。",
        "empty": "没看出要怎么改这篇笔记，可以试试“重新生成第3页”“第2页改成……”或“删除第4页”。",
        "too_many": "一次最多做 {max} 处修改，请分几次说。",
        "unknown_op": "不支持的操作“{op}”。",
        "bad_number": "页码必须是数字，收到的是“{value}”。",
        "needs_page": "“{op}”需要指定页码。",
        "no_page": "没有第{page}页（这篇笔记共{count}页）。",
        "add_range": "新页只能放在第1到第{max}页。",
        "needs_to": "移动第{page}页需要指定目标位置。",
        "to_range": "不能移到第{to}页（这篇笔记共{count}页）。",
        "edit_text": "修改第{page}页需要给出新的文字。",
        "add_text": "新增的一页需要写明内容。",
        "topic_text": "新主题不能为空。",
        "mixed": "新主题不能和修改放在同一条消息里，请分开发送。",
        "gone": "第{page}页在这条消息里已经被删除了。",
        "delete_all": "不能删除所有页面。",
    },
    "en": {
        "not_json": "I couldn't read that change; please rephrase, e.g. “regenerate page 3” or “page 2: …”.",
        "empty": "I couldn't tell what to change in this post. Try “regenerate page 3”, “page 2: …” or “delete page 4”.",
        "too_many": "At most {max} changes at a time; please split the request.",
        "unknown_op": "Unknown change “{op}”.",
        "bad_number": "Page numbers must be numbers, got “{value}”.",
        "needs_page": "“{op}” needs a page number.",
        "no_page": "There is no page {page} (the post has {count} pages).",
        "add_range": "A new page can go at positions 1 to {max}.",
        "needs_to": "Moving page {page} needs a target position.",
        "to_range": "Page {page} can't move to position {to} (the post has {count} pages).",
        "edit_text": "Editing page {page} needs the new text.",
        "add_text": "A new page needs its text.",
        "topic_text": "The new topic is empty.",
        "mixed": "A new topic can't be combined with edits in one message; please send it on its own.",
        "gone": "Page {page} is deleted earlier in the same message.",
        "delete_all": "A post can't lose every page.",
    },
}


def _messages(lang: str) -> dict[str, str]:
    return _MESSAGES["zh" if lang.lower().startswith("zh") else "en"]


def _plan(
    edits: Sequence[Edit], page_count: int, lang: str, last_is_summary: bool = False
) -> list[Edit]:
    """Validates `edits` and returns them renumbered for sequential application."""
    say = _messages(lang)
    if not edits:
        raise ValueError(say["empty"])
    if len(edits) > MAX_ACTIONS:
        raise ValueError(say["too_many"].format(max=MAX_ACTIONS))
    if len(edits) > 1 and any(e.op == "new_post" for e in edits):
        raise ValueError(say["mixed"])
    slots: list[int] = list(range(1, page_count + 1))  # original numbers; new pages < 0
    added = 0
    out: list[Edit] = []

    def in_range(page: int | None, op: str) -> int:
        if page is None:
            raise ValueError(say["needs_page"].format(op=op))
        if not 1 <= page <= page_count:
            raise ValueError(say["no_page"].format(page=page, count=page_count))
        return page

    def position(page: int) -> int:
        if page not in slots:
            raise ValueError(say["gone"].format(page=page))
        return slots.index(page)

    for edit in edits:
        op = edit.op
        if op not in OPS:
            raise ValueError(say["unknown_op"].format(op=op))
        text = (edit.text or "").strip()
        if op in ("regenerate", "edit"):
            page = in_range(edit.page, op)
            if op == "edit" and not text:
                raise ValueError(say["edit_text"].format(page=page))
            out.append(replace(edit, page=position(page) + 1))
        elif op == "delete":
            at = position(in_range(edit.page, op))
            if len(slots) == 1:
                raise ValueError(say["delete_all"])
            slots.pop(at)
            out.append(replace(edit, page=at + 1))
        elif op == "add":
            if not text:
                raise ValueError(say["add_text"])
            if edit.page is None:
                summary_last = last_is_summary and slots and slots[-1] == page_count
                at = len(slots) - 1 if summary_last else len(slots)
            elif 1 <= edit.page <= page_count + 1:
                at = len(slots) if edit.page == page_count + 1 else position(edit.page)
            else:
                raise ValueError(say["add_range"].format(max=page_count + 1))
            added += 1
            slots.insert(at, -added)
            out.append(replace(edit, page=at + 1))
        elif op == "move":
            page = in_range(edit.page, op)
            if edit.to is None:
                raise ValueError(say["needs_to"].format(page=page))
            if not 1 <= edit.to <= page_count:
                raise ValueError(say["to_range"].format(page=page, to=edit.to, count=page_count))
            at, anchor = position(page), position(edit.to)
            slots.pop(at)
            # The page takes the place of original page `to`: it lands before that
            # page when moving up, after it when moving down.
            if edit.to == page:
                target = at
            elif anchor < at:
                target = slots.index(edit.to)
            else:
                target = slots.index(edit.to) + 1
            slots.insert(target, page)
            out.append(replace(edit, page=at + 1, to=target + 1))
        elif op == "new_post" and not text:
            raise ValueError(say["topic_text"])
        else:
            out.append(edit)
    return out


def check_edits(edits: Sequence[Edit], page_count: int, *, lang: str = "en") -> list[Edit]:
    """`edits` unchanged when they fit a post of `page_count` pages, else ValueError
    with a message for the user (in `lang`). Run it on `parse_command`'s result too."""
    _plan(edits, page_count, lang)
    return list(edits)


def sequential(
    edits: Sequence[Edit], page_count: int, *, last_is_summary: bool = False
) -> list[Edit]:
    """The same edits renumbered so that each refers to the post as the previous ones
    left it (delete 2, delete 3 → delete 2, delete 2), for an applier that applies one
    at a time. An `add` without a page gets its position (before the summary when
    `last_is_summary`). Raises ValueError like `check_edits`."""
    return _plan(edits, page_count, "en", last_is_summary)


_OP_ALIASES = {
    "redraw": "regenerate",
    "regen": "regenerate",
    "rewrite": "edit",
    "update": "edit",
    "replace": "edit",
    "insert": "add",
    "remove": "delete",
    "new_cover": "cover",
    "new": "new_post",
    "newpost": "new_post",
    "new_topic": "new_post",
    "topic": "new_post",
    "draw": "generate",
    "start": "generate",
}
_LEADING_TAG = re.compile(
    r"^\s*[\[【]\s*(?:封面|内容|总结|cover|content|summary)\s*[\]】]\s*", re.I
)


def _page_value(value: Any, say: dict[str, str]) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(say["bad_number"].format(value=value))
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,4}\s*", value):
        return int(value)
    raise ValueError(say["bad_number"].format(value=value))


def _edit_from(action: Any, say: dict[str, str]) -> Edit:
    if not isinstance(action, dict):
        raise ValueError(say["not_json"])
    op = str(action.get("op") or action.get("action") or "").strip().lower().replace("-", "_")
    op = _OP_ALIASES.get(op, op)
    if op not in OPS:
        raise ValueError(say["unknown_op"].format(op=op or "?"))
    page = _page_value(action.get("page"), say)
    to = _page_value(action.get("to"), say)
    raw_text = action.get("text")
    text = _LEADING_TAG.sub("", str(raw_text)).strip() if raw_text is not None else ""
    text_or_none = text or None
    if op == "retry" and page is not None:  # a failed page named by number: redraw it
        return Edit("regenerate", page)
    if op in ("regenerate", "delete"):
        return Edit(op, page)
    if op in ("edit", "add"):
        return Edit(op, page, text=text_or_none)
    if op == "move":
        return Edit(op, page, to=to)
    if op in ("cover", "new_post"):
        return Edit(op, text=text_or_none)
    return Edit(op)  # retry, generate


def parse_edit_answer(answer: str, page_count: int, *, lang: str = "en") -> list[Edit]:
    """The text model's edit answer `{"actions": [...]}` as Edits, checked against a
    post of `page_count` pages. Fences and prose around the JSON are fine, as is a bare
    list of actions or a single action object. Raises ValueError with a message for the
    user (in `lang`) when the answer is not usable."""
    say = _messages(lang)
    try:
        data = find_json_object(answer, allow_list=True)
    except ValueError:
        raise ValueError(say["not_json"]) from None
    if isinstance(data, dict):
        actions = data.get("actions", data.get("edits"))
        if actions is None and ("op" in data or "action" in data):
            actions = [data]
    else:
        actions = data
    if not isinstance(actions, list):
        raise ValueError(say["not_json"])
    if len(actions) > MAX_ACTIONS:
        raise ValueError(say["too_many"].format(max=MAX_ACTIONS))
    return check_edits([_edit_from(a, say) for a in actions], page_count, lang=lang)


# ----------------------------------------------------------------- describing


def _quote(text: str | None, zh: bool) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    line = line if len(line) <= 30 else line[:29].rstrip() + "…"
    return f"「{line}」" if zh else f"“{line}”"


def describe(edits: Sequence[Edit], lang: str = "zh") -> str:
    """One Markdown list line per edit, phrased so it reads right before the redraw
    is done ("第3页：重新生成" / "Page 3: redraw")."""
    zh = lang.lower().startswith("zh")
    lines = []
    for e in edits:
        q = _quote(e.text, zh)
        if zh:
            line = {
                "regenerate": f"第{e.page}页：重新生成",
                "retry": "失败的页面：重新生成",
                "edit": f"第{e.page}页：改为{q}，重新生成",
                "cover": "封面：换一张" + (f"，文字改为{q}" if e.text else ""),
                "add": (f"新增第{e.page}页：" if e.page else "新增一页：") + q,
                "delete": f"第{e.page}页：删除",
                "move": f"第{e.page}页：移到第{e.to}页",
                "generate": "开始生成图片",
                "new_post": f"新笔记：{q}",
            }[e.op]
        else:
            line = {
                "regenerate": f"Page {e.page}: redraw",
                "retry": "Failed pages: redraw",
                "edit": f"Page {e.page}: new text {q}, redraw",
                "cover": "Cover: new version" + (f" with text {q}" if e.text else ""),
                "add": (f"New page {e.page}: " if e.page else "New page: ") + q,
                "delete": f"Page {e.page}: delete",
                "move": f"Page {e.page}: move to {e.to}",
                "generate": "Drawing the pages",
                "new_post": f"New post: {q}",
            }[e.op]
        lines.append(f"- {line}")
    return "\n".join(lines)
