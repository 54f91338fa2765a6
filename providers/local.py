"""The built-in offline provider: an outline writer and a page-card renderer.

`local` needs no network, key or model, so a fresh install can make a whole post
and every test can run the real flow. Outlines come from templates in the
topic's language (RedInk's `[封面]` / `<page>` format); the flow's post-copy and
edit prompts get JSON answers of the shape they ask for; cards are drawn with
Pillow in a worker thread. Fonts are looked up in `providers.fonts`.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio.to_thread
from PIL import Image, ImageDraw
from pydantic import Field, field_validator

from gateway.errors import InvalidRequest
from providers import fonts
from providers.base import (
    ImageData,
    ImageProvider,
    ImageRequest,
    ProviderOptions,
    TextProvider,
    last_user_text,
    message_text,
)
from providers.registry import register

log = logging.getLogger("inkgate.providers.local")

MIN_PAGES, MAX_PAGES = 2, 18
PAGE_SEPARATOR = "\n<page>\n"

# ---------------------------------------------------------------- outline text

_TOPIC_LINE = re.compile(r"^\s*(?:topic|主题)\s*[:：]\s*(.+?)\s*$", re.I | re.M)
_PAGES_LINE = re.compile(r"^\s*(?:pages|页数)\s*[:：]\s*(?:exactly\s*)?(\d{1,3})", re.I | re.M)
_CN_DIGITS = dict(zip("一二三四五六七八九", range(1, 10), strict=True)) | {"两": 2}
# Each pattern also eats the glue around the count so the topic reads cleanly without it.
_COUNT_IN_TOPIC = (
    re.compile(r"[，,、\s]*(?:共|一共)?\s*(\d{1,3})\s*[页张]的?"),
    re.compile(
        r"[，,、\s]*(?:共|一共)?\s*(十[一二三四五六七八]?|[一二两三四五六七八九])\s*[页张]的?"
    ),
    re.compile(r"[,\s]*(?:in\s+)?(\d{1,3})(?:\s*-\s*|\s+)(?:pages?|slides?)\b", re.I),
)
_ZH_WRAPPER = re.compile(
    r"^(?:请|帮我|给我)?(?:写|做|生成|来)(?:一篇|一份|一个|个|篇)?(?:关于)?|^关于"
)
_ZH_SUFFIX = re.compile(r"的?(?:小红书)?(?:笔记|图文|帖子|文章)$")
_EN_WRAPPER = re.compile(
    r"^(?:(?:please\s+)?(?:write|make|create|generate)\b.*?\b(?:about|on)"
    r"|an?\s+(?:\w+\s+)?(?:guide|post|note)\s+(?:to|about|on))\s+",
    re.I,
)


def _chinese_number(text: str) -> int:
    if text.startswith("十"):
        return 10 + _CN_DIGITS.get(text[1:], 0)
    return _CN_DIGITS[text]


def extract_request(text: str) -> tuple[str, int | None]:
    """The topic and the page count asked for (unclamped), from a user message.

    A `Topic:`/`主题：` line names the topic (else the whole text is the topic); a
    `Pages: exactly N` line wins over a count written in the topic ("5页", "五页",
    "5 pages", "5-page"). The count phrase and "写一篇关于…的笔记" wrappers are removed.
    """
    match = _TOPIC_LINE.search(text)
    topic = match.group(1) if match else " ".join(text.split())
    pages_line = _PAGES_LINE.search(text)
    count = int(pages_line.group(1)) if pages_line else None
    for pattern in _COUNT_IN_TOPIC:
        found = pattern.search(topic)
        if found:
            raw = found.group(1)
            if count is None:
                count = int(raw) if raw.isdigit() else _chinese_number(raw)
            topic = topic[: found.start()] + " " + topic[found.end() :]
            break
    cleaned = " ".join(topic.split()).strip(" ，,。.!！:：-")
    for wrapper in (_ZH_WRAPPER, _ZH_SUFFIX, _EN_WRAPPER):
        cleaned = wrapper.sub("", cleaned, count=1).strip() or cleaned
    if not cleaned and fonts.has_cjk(text):  # e.g. just "5页": still answer in Chinese
        cleaned = "这个主题"
    return cleaned, count


def page_count_for(topic: str, requested: int | None) -> int:
    """`requested` clamped to 2–18, else 6–8 chosen from the topic (stable per topic)."""
    if requested is not None:
        return max(MIN_PAGES, min(MAX_PAGES, requested))
    return 6 + _seed(topic) % 3


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


# Templates, one block per page: a "[key] heading" line, then the page's lines. Several
# [step] blocks make the step list; [cover] and [subtitle] list variants picked by
# the topic's hash. {t} is the topic, {T} the topic capitalised, {n} the page count.
_ZH_TEMPLATES = """\
[cover]
{t}全攻略✨
新手也能轻松上手的{t}
关于{t}，这篇说清楚了
[subtitle]
{n}页干货，建议先收藏再看📌
亲测有效的经验，一次讲明白
少走弯路的实用清单，看完就能用
[why] 为什么值得花时间在{t}上？
• 方法对了，{t}其实没有想象中难
• 每天一点点投入，一个月就能看到变化
• 很多人卡在第一步，其实门槛很低
[prepare] 准备清单📝
• 目标：想清楚你想从{t}里得到什么
• 时间：每次留出20到30分钟
• 工具：先用手边现有的，不急着买贵的
• 记录：准备一个本子或备忘录
[howto] 具体怎么做
• 先花10分钟了解{t}的核心要点
• 第一次只做最简单的版本
• 每周固定2到3次，慢慢形成习惯
[step_heading] 步骤{num}：{name}
[step] 先搞懂基础
• 花10分钟了解{t}的核心要点
• 只找一两个靠谱参考，不贪多
[step] 从最小的一步开始
• 第一次只做最简单的版本
• 完成比完美更重要
[step] 固定节奏
• 每周固定2到3个时间段
• 和已有的习惯绑在一起更容易坚持
[step] 记录和调整
• 每次记下做了什么、效果如何
• 不顺的地方一次只改一个变量
[step] 适当加点难度
• 熟练之后再尝试进阶做法
• 每次只比上次多一点点
[step] 找人一起交流
• 把心得分享给朋友或发在评论区
• 别人的反馈常能发现你的盲点
[step] 定期复盘
• 每月回顾一次哪些方法最有效
• 留下有用的，果断放弃没用的
[step] 形成自己的方法
• 把经验整理成一张清单
• 下次照着做，省时又省心
[mistakes] 避坑指南⚠️
• 一开始就追求完美，很容易半途而废
• 跟风买一堆装备，最后都在吃灰
• 只收藏不行动，看再多也没用
[tips] 小贴士💡
• 把{t}安排在精力最好的时间段
• 给自己设一个小奖励，更有动力
• 拍照记录进度，回头看超有成就感
[faq] 常见问题Q&A
• 零基础能开始吗？完全可以，从最简单的做起
• 多久能看到效果？坚持两三周就会有感觉
• 没时间怎么办？每天10分钟也有用
[advanced] 进阶玩法🚀
• 基础稳了之后，试试不同的风格和组合
• 给自己定一个30天小挑战
• 学习高手的做法，再改成适合自己的
[story] 我的真实体验
• 刚接触{t}时，我也踩过不少坑
• 坚持一个月后，最大的变化是更有条理了
• 现在它已经成了我生活里的小确幸
[budget] 省钱攻略💰
• 先用现有的东西，确定喜欢再升级
• 入门款就够用，不必一步到位
• 关注二手平台和试用装，性价比超高
[summary] 总结一下
• {t}没有想象中难，关键是开始
• 先做起来，再一点点优化
觉得有用记得点赞收藏，评论区聊聊你的经验吧～
"""
_EN_TEMPLATES = """\
[cover]
{T}: the complete guide ✨
{T}, made easy for beginners
Everything I wish I knew about {t}
[subtitle]
{n} pages of practical tips, save it for later 📌
Tried-and-tested advice, explained simply
A no-fluff checklist you can use today
[why] Why {t} is worth your time
• With the right method, {t} is easier than it looks
• A little every day adds up within a month
• Most people stall at step one, and it is a small step
[prepare] What you need 📝
• A goal: what you want from {t}
• Time: 20 to 30 minutes per session
• Tools: start with what you already have
• A notebook or notes app to track progress
[howto] How to do it
• Spend 10 minutes on the core ideas of {t}
• Do the simplest version first
• Repeat 2 to 3 times a week until it sticks
[step_heading] Step {num}: {name}
[step] Learn the basics
• Spend 10 minutes on the core ideas of {t}
• Pick one or two trusted sources, not ten
[step] Start small
• Do the simplest version first
• Done beats perfect
[step] Set a rhythm
• Block 2 to 3 fixed slots a week
• Tie it to a habit you already have
[step] Track and adjust
• Note what you did and how it went
• Change one thing at a time
[step] Level up
• Try advanced moves once the basics feel easy
• Raise the bar a little each time
[step] Share and compare
• Tell a friend or post your progress
• Feedback finds blind spots fast
[step] Review monthly
• Look back at what worked best
• Keep the useful parts, drop the rest
[step] Make it your own
• Turn what you learned into a checklist
• Next time, just follow it
[mistakes] Common mistakes ⚠️
• Chasing perfection on day one
• Buying gear you never use
• Saving posts instead of starting
[tips] Tips 💡
• Schedule {t} for when your energy is highest
• Give yourself a small reward
• Photograph your progress, it keeps you going
[faq] Quick Q&A
• No experience? Start with the simplest version
• Results? Usually within 2 to 3 weeks
• No time? 10 minutes a day still counts
[advanced] Next level 🚀
• Mix styles and combinations once the basics are solid
• Try a 30-day challenge
• Copy what experts do, then adapt it
[story] My honest experience
• I made plenty of mistakes when I started {t}
• After a month, the biggest change was consistency
• Now it is a small joy in my week
[budget] On a budget 💰
• Use what you have before upgrading
• Entry-level gear is enough to start
• Second-hand and sample sizes are great value
[summary] Wrap-up
• {T} is easier than it looks, the key is to start
• Begin today and improve as you go
Save this post and share your tips in the comments!
"""

Section = tuple[str, tuple[str, ...]]


def _parse_templates(text: str) -> dict[str, list[Section]]:
    sections: dict[str, list[Section]] = {}
    for block in re.split(r"\n(?=\[)", text.strip()):
        head, *lines = block.splitlines()
        key, _, heading = head.partition("]")
        sections.setdefault(key.lstrip("["), []).append((heading.strip(), tuple(lines)))
    return sections


_ZH = _parse_templates(_ZH_TEMPLATES)
_EN = _parse_templates(_EN_TEMPLATES)
# Which optional sections appear first as the page count grows, and their order in the post.
_SECTION_PRIORITY = ("why", "prepare", "mistakes", "tips", "faq", "advanced", "story", "budget")
_SECTION_ORDER = (
    "why",
    "prepare",
    "steps",
    "advanced",
    "mistakes",
    "budget",
    "faq",
    "tips",
    "story",
)
_ZH_NUMERALS = "一二三四五六七八"


def _plan_sections(content_pages: int) -> list[str]:
    steps = 0 if content_pages < 3 else min(8, max(1, content_pages - 4))
    chosen = set(_SECTION_PRIORITY[: content_pages - steps])
    plan: list[str] = []
    for name in _SECTION_ORDER:
        if name == "steps":
            plan += ["howto"] if steps == 1 else [f"step{i}" for i in range(steps)]
        elif name in chosen:
            plan.append(name)
    return plan


def write_outline(topic: str, pages: int) -> str:
    """A `pages`-page outline for `topic`, in the topic's language. Deterministic."""
    zh = fonts.has_cjk(topic)
    lang = _ZH if zh else _EN
    topic = topic or ("这个主题" if zh else "this topic")
    fill = {"t": topic, "T": topic[:1].upper() + topic[1:], "n": pages}
    seed = _seed(topic)
    titles, subtitles = lang["cover"][0][1], lang["subtitle"][0][1]
    title, subtitle = titles[seed % len(titles)], subtitles[seed // 7 % len(subtitles)]
    out = [f"[封面]\n{title}\n{subtitle}".format(**fill)]
    for name in _plan_sections(pages - 2):
        if name.startswith("step"):
            index = int(name[4:])
            step_name, lines = lang["step"][index]
            num = _ZH_NUMERALS[index] if zh else index + 1
            heading = lang["step_heading"][0][0].format(num=num, name=step_name)
        else:
            heading, lines = lang[name][0]
        out.append("[内容]\n" + "\n".join((heading, *lines)).format(**fill))
    heading, lines = lang["summary"][0]
    out.append("[总结]\n" + "\n".join((heading, *lines)).format(**fill))
    # A topic may contain "|", which RedInk's format reserves.
    return PAGE_SEPARATOR.join(out).replace("|", "/")


# ------------------------------------------------------- OpenWebUI housekeeping

_EMOJI = (
    ("咖啡|茶|coffee|tea", "☕"),
    ("旅|travel|trip", "✈️"),
    ("健身|运动|fitness|workout|gym", "💪"),
    ("护肤|妆|skin|makeup", "💄"),
    ("学|读书|study|book|learn", "📚"),
    ("菜|美食|recipe|food|cook|bak", "🍳"),
    ("猫|狗|宠物|pet|cat|dog", "🐾"),
    ("钱|理财|money|budget|saving", "💰"),
)


def answer_task(prompt: str) -> str:
    """Answers an OpenWebUI `### Task:` prompt (title, tags, follow-ups) with plain JSON."""
    instruction, _, rest = prompt.partition("<chat_history>")
    history = rest.partition("</chat_history>")[0]
    user = re.search(r"^\s*USER:\s*(.+)$", history, re.M | re.I)
    subject = extract_request(user.group(1))[0] if user else ""
    zh = fonts.has_cjk(subject)
    task = instruction.lower()
    if re.search(r"follow[-_ ]?ups?\b", task):
        ups = (
            ["能把第2页写得更详细一些吗？", "换一个更吸引人的封面标题？", "改成5页的版本？"]
            if zh
            else ["Can you expand page 2?", "Try a catchier cover title?", "Make a 5-page version?"]
        )
        return json.dumps({"follow_ups": ups}, ensure_ascii=False)
    if re.search(r"\btags?\b", task):
        tags = ["General", "生活" if zh else "Lifestyle"] + ([subject[:24]] if subject else [])
        return json.dumps({"tags": tags}, ensure_ascii=False)
    if re.search(r"\btitle\b", task):
        emoji = next((e for keys, e in _EMOJI if re.search(keys, subject, re.I)), "✨")
        if zh:
            short = subject[:12] or "小红书笔记"
        else:
            short = " ".join(w[:1].upper() + w[1:] for w in subject.split()[:5]) or "New Post"
        return json.dumps({"title": f"{emoji} {short}"}, ensure_ascii=False)
    if re.search(r"\bquer(y|ies)\b", task):
        return json.dumps({"queries": []})
    return "This offline model writes post outlines; there is nothing to do for this task."


# --------------------------------------------------- flow tasks: copy and edits

# The flow's post-copy and edit prompts carry a marker such as "[inkgate:post_copy]" in
# their system message (gateway/flow/copy.py, gateway/flow/commands.py).
_FLOW_TASK = re.compile(r"\[inkgate:(\w+)\]")
_OUTLINE_SECTION = re.compile(r"^\s*(?:outline|大纲)\s*[:：]\s*\n(.*)", re.I | re.M | re.S)
_OUTLINE_PAGE_SPLIT = re.compile(r"<\s*page\s*/?\s*>", re.I)


def flow_task(messages: list[dict]) -> str | None:
    """The flow task a request is for ("post_copy", "post_edit"), from the marker in its
    system message; None for outlines, OpenWebUI tasks and plain chat."""
    for message in messages:
        if message.get("role") in ("system", "developer"):
            found = _FLOW_TASK.search(message_text(message))
            if found:
                return found.group(1)
    return None


def _fit(text: str, budget: int) -> str:
    """`text` in at most `budget` characters, cut after a whole word when one fits."""
    if len(text) <= budget:
        return text
    cut = text[:budget]
    whole = cut.rsplit(" ", 1)[0] if text[budget] != " " and " " in cut else cut
    return whole.strip()


def _camel_words(text: str, budget: int) -> str:
    """A hashtag from the words of `text` ("HouseplantCare"), whole words up to `budget`."""
    tag = ""
    for word in re.findall(r"\w+", text):
        word = word[:1].upper() + word[1:]
        if tag and len(tag) + len(word) > budget:
            break
        tag += word
    return tag[:budget]


def _outline_headings(outline: str) -> list[str]:
    """The first line of each content page, without tags and list markup."""
    headings = []
    for piece in _OUTLINE_PAGE_SPLIT.split(outline):
        tag = _TAG.match(piece)
        if not tag or _KINDS.get(tag.group(1), tag.group(1).lower()) != "content":
            continue
        lines = [ln.strip() for ln in piece[tag.end() :].splitlines() if ln.strip()]
        if lines:
            heading = re.sub(
                r"^(?:标题|title)\s*[:：]\s*|^[#>*•\-\d.、\s]+", "", lines[0], flags=re.I
            )
            headings.append(_fit(heading.strip(), 30))
    return [h for h in headings if h][:6]


def write_copy(prompt: str) -> str:
    """Post copy as JSON (`titles`, `copywriting`, `tags`) for the flow's copy prompt
    ("Topic: …" and "Outline:" sections), in the topic's language: from the topic and
    the outline's page headings (else those of `write_outline`). Deterministic."""
    topic = extract_request(prompt)[0]
    zh = fonts.has_cjk(topic)
    topic = topic or ("这个主题" if zh else "this topic")
    section = _OUTLINE_SECTION.search(prompt)
    outline = section.group(1).strip() if section else ""
    outline = outline or write_outline(topic, page_count_for(topic, None))
    pages = len([p for p in _OUTLINE_PAGE_SPLIT.split(outline) if p.strip()])
    headings = _outline_headings(outline) or ([topic] if zh else [topic[:1].upper() + topic[1:]])
    emoji = next((e for keys, e in _EMOJI if re.search(keys, topic, re.I)), "✨")
    points = "\n".join(f"✅ {h}" for h in headings)
    if zh:
        t = topic
        titles = [
            f"{_fit(t, 20 - 3 - len(emoji))}全攻略{emoji}",
            f"新手必看！{_fit(t, 20 - 9)}入门指南",
            f"关于{_fit(t, 20 - 9)}，这篇说清楚了",
        ]
        body = (
            f"{emoji} 关于{t}，我把踩过的坑和攒下的经验整理成了这{pages}页笔记，"
            "建议先收藏再慢慢看📌\n\n"
            f"这篇你会看到：\n{points}\n\n"
            f"💡 {t}没有想象中难，关键是先开始，再一点点调整。"
            "不用一开始就追求完美，先完成，再慢慢变好。"
            "每天花一点时间，一个月后回头看，变化会让你惊喜。\n\n"
            f"你在{t}上有什么心得或者疑问？评论区一起聊聊吧👇"
        )
        compact = _fit("".join(t.split()), 16)
        tags = [compact, f"{compact}攻略", f"{compact}入门", "干货分享", "新手必看", "经验分享"]
    else:
        t, T = topic, topic[:1].upper() + topic[1:]
        short = _fit(T, 10)  # the three titles stay within 20 characters
        titles = [f"{short} 101 {emoji}", f"{short} made easy", f"{short}: my tips"]
        body = (
            f"{emoji} Everything I learned about {t}, in {pages} pages. Save it for later 📌\n\n"
            f"Inside:\n{points}\n\n"
            f"💡 {T} is easier than it looks: start small and adjust as you go. "
            "A little time every day adds up faster than you think.\n\n"
            f"What is your best tip for {t}? Tell me in the comments 👇"
        )
        compact = _camel_words(t, 16)
        tags = [compact, f"{compact}Tips", "Beginners", "HowTo", "LifeHacks", "Lifestyle"]
    return json.dumps(
        {"titles": titles, "copywriting": body, "tags": [tag for tag in tags if tag]},
        ensure_ascii=False,
    )


def answer_edit(instruction: str) -> str:
    """The answer to the flow's edit prompt. This model cannot understand free text, so
    the instruction becomes a new topic: one sentence in, a post out, mid-conversation
    too."""
    return json.dumps(
        {"actions": [{"op": "new_post", "text": instruction.strip()}]}, ensure_ascii=False
    )


# ------------------------------------------------------------------ page cards


@dataclass(frozen=True)
class Palette:
    """Card colours, all from one hue so every page of a post matches."""

    hue: float
    background: tuple[int, int, int]  # pastel page
    soft: tuple[int, int, int]  # decoration on the pastel page
    marker: tuple[int, int, int]  # highlighter under the cover title
    accent: tuple[int, int, int]  # badge, bullets, summary page
    ink: tuple[int, int, int]  # text


def _rgb(hue: float, lightness: float, saturation: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(hue % 1.0, lightness, saturation)
    return round(r * 255), round(g * 255), round(b * 255)


def _accent(hue: float) -> tuple[int, int, int]:
    """The accent at a lightness where white text on it stays readable (greens and
    yellows look much lighter than blues at the same HLS lightness)."""
    lightness = 0.46
    while True:
        r, g, b = _rgb(hue, lightness, 0.60)
        if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.42 * 255 or lightness < 0.25:
            return r, g, b
        lightness -= 0.02


def palette_for(topic: str, reference: ImageData | None = None) -> Palette:
    """A palette from the topic's hash, or from the dominant hue of a reference image
    (the flow passes the cover, so later pages keep its colours)."""
    hue = _seed(topic) % 360 / 360
    if reference is not None:
        try:
            with Image.open(io.BytesIO(reference.data)) as image:
                image.draft("RGB", (64, 64))  # JPEG: decode at low resolution, much faster
                pixel = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
            ref_hue, _, ref_saturation = colorsys.rgb_to_hls(*(c / 255 for c in pixel))
            if ref_saturation > 0.08:  # a grey reference says nothing about colour
                hue = ref_hue
        except (OSError, ValueError, Image.DecompressionBombError):
            log.debug("reference image unreadable, palette from the topic")
    return Palette(
        hue=hue,
        background=_rgb(hue, 0.93, 0.62),
        soft=_rgb(hue, 0.87, 0.55),
        marker=_rgb(hue, 0.80, 0.70),
        accent=_accent(hue),
        ink=_rgb(hue, 0.18, 0.35),
    )


def card_size(size: str | None, aspect_ratio: str, long_side: int = 1440) -> tuple[int, int]:
    """Pixels of a card: an explicit "WxH" wins (clamped to 64–4096), else the ratio
    with `long_side` as the longer edge, rounded to even numbers (3:4 → 1080×1440,
    1:1 → 1440×1440). "auto" or a malformed size uses the ratio; a bad ratio is 3:4."""
    match = re.fullmatch(r"\s*(\d{2,5})\s*[xX×*]\s*(\d{2,5})\s*", size or "")
    if match:
        width, height = (max(64, min(4096, int(v))) for v in match.groups())
        return width, height
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[:/xX]\s*(\d+(?:\.\d+)?)\s*", aspect_ratio or "")
    a, b = (float(match[1]), float(match[2])) if match and float(match[2]) else (3.0, 4.0)
    ratio = max(0.25, min(4.0, a / b)) if a else 0.75
    if ratio >= 1:
        return long_side, 2 * round(long_side / ratio / 2)
    return 2 * round(long_side * ratio / 2), long_side


@dataclass(frozen=True)
class PageContent:
    """What one card shows."""

    title: str
    body: str
    index: int  # 0-based
    count: int | None
    kind: str  # cover | content | summary
    topic: str


_TAG = re.compile(r"^\s*[\[【]\s*(封面|内容|总结|cover|content|summary)\s*[\]】]\s*", re.I)
_KINDS = {"封面": "cover", "内容": "content", "总结": "summary"}
_PAGE_SECTION = re.compile(r"(?:页面内容|Page content)\s*[:：]\s*\n(.*?)(?:\n\s*\n|\Z)", re.S)


def page_content(request: ImageRequest) -> PageContent:
    """The card text from the flow's hints, else from the prompt (first line = title)."""
    hints = request.hints or {}
    title, body = str(hints.get("title") or ""), str(hints.get("body") or "")
    kind = str(hints.get("page_type") or "")
    if not title:
        prompt = request.prompt
        # The flow's full image prompt carries the page after "页面内容：": use only that.
        section = _PAGE_SECTION.search(prompt)
        prompt = section.group(1) if section else prompt
        tag = _TAG.match(prompt)
        if tag:
            kind = kind or _KINDS.get(tag.group(1), tag.group(1).lower())
            prompt = prompt[tag.end() :]
        lines = [line.strip() for line in prompt.strip().splitlines() if line.strip()]
        title = lines[0][:80] if lines else ""
        body = body or "\n".join(lines[1:])[:600]
    index = int(hints.get("page_index") or 0)
    count = hints.get("page_count")
    if kind not in ("cover", "content", "summary"):
        kind = "cover" if index == 0 else "content"
    return PageContent(
        # More than this cannot be read on a card even at the smallest font size; the
        # cut keeps fitting fast for runaway input.
        title=_TAG.sub("", title).strip()[:200],
        body=body.strip()[:1500],
        index=index,
        count=int(count) if count else None,
        kind=kind,
        topic=str(hints.get("topic") or title),
    )


_cjk_warning_issued = False
_warning_lock = threading.Lock()


def _warn_missing_cjk_once() -> None:
    global _cjk_warning_issued
    with _warning_lock:
        if _cjk_warning_issued:
            return
        _cjk_warning_issued = True
    log.warning(
        "No CJK font installed: Chinese text on local cards is drawn as '%s'. "
        "Install one with `apt-get install fonts-noto-cjk` and restart.",
        fonts.PLACEHOLDER,
    )


def render_card(
    page: PageContent,
    size: tuple[int, int],
    pair: fonts.FontPair,
    palette: Palette,
    variant: int = 0,
) -> bytes:
    """One page card as PNG bytes. Blocking (Pillow): run it in a worker thread."""
    ideograph = next((c for c in page.title + page.body if fonts.is_cjk(c) and c.isalpha()), None)
    if ideograph and not fonts.covers(pair.regular, ideograph):
        _warn_missing_cjk_once()
    summary = page.kind == "summary"
    image = Image.new("RGB", size, palette.accent if summary else palette.background)
    draw = ImageDraw.Draw(image)
    scale = min(size) / 1080  # layouts are designed on a 1080 px wide card
    # The pattern moves with the page and the variant, so n > 1 images differ.
    _decorate(draw, size, palette, summary, _seed(page.topic) + page.index * 7 + variant * 13)
    if page.kind == "cover":
        _draw_cover(draw, page, size, scale, pair, palette)
    else:
        _draw_page(draw, page, size, scale, pair, palette)
    _draw_badge(draw, page, size[0], scale, pair.bold, palette, summary)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # one per page: speed over size
    return buffer.getvalue()


def _decorate(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], palette: Palette, summary: bool, seed: int
) -> None:
    """Soft circles and a dot grid; positions from `seed` so pages differ a little."""
    width, height = size
    circle = _rgb(palette.hue, 0.52, 0.58) if summary else palette.soft
    dots = _rgb(palette.hue, 0.60, 0.60) if summary else palette.marker
    for i in range(3):
        radius = (0.16 + (seed >> (i * 5) & 7) / 50) * width
        cx = (seed >> (i * 7 + 3) & 255) / 255 * width
        cy = (0.04 + 0.46 * i) * height + ((seed >> (i * 4 + 11) & 63) - 32) / 800 * height
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=circle)
    step = min(size) / 26
    left = width - 7 * step if seed & 1 else 2 * step
    for row in range(3):
        for col in range(6):
            x, y = left + col * step, height - 3.3 * step + row * step
            draw.ellipse((x, y, x + step * 0.24, y + step * 0.24), fill=dots)


def _draw_cover(draw, page, size, scale, pair, palette) -> None:
    """A white panel with the big centred title on a highlighter stroke, subtitle below."""
    width, height = size
    margin, pad = round(72 * scale), round(64 * scale)
    panel = (margin, round(height * 0.2), width - margin, round(height * 0.8))
    draw.rounded_rectangle(panel, radius=round(48 * scale), fill=(255, 255, 255))
    inner_w, inner_h = panel[2] - panel[0] - 2 * pad, panel[3] - panel[1] - 2 * pad
    box = (inner_w, inner_h * 0.62)
    title = fonts.fit_text(page.title, pair.bold, box, 110 * scale, 56 * scale, balance=True)
    box = (inner_w, inner_h * 0.3)
    subtitle = fonts.fit_text(page.body, pair.regular, box, 46 * scale, 30 * scale)
    gap = round(56 * scale) if subtitle.lines else 0
    y = panel[1] + (panel[3] - panel[1] - title.height - gap - subtitle.height) // 2
    centre = width / 2
    for i, line in enumerate(title.lines):
        if i == len(title.lines) - 1:  # a highlighter stroke under the last line
            half = title.font.getlength(line.text) / 2 + 10 * scale
            top = y + title.size * 0.72
            stroke = (centre - half, top, centre + half, top + title.size * 0.4)
            draw.rectangle(stroke, fill=palette.marker)
        draw.text((centre, y), line.text, font=title.font, fill=palette.ink, anchor="ma")
        y += title.line_height
    y += gap
    for line in subtitle.lines:
        draw.text((centre, y), line.text, font=subtitle.font, fill=palette.accent, anchor="ma")
        y += subtitle.line_height


def _draw_page(draw, page, size, scale, pair, palette) -> None:
    """Heading with an accent bar, then the body in a white panel with bullets; the
    group sits a little above the middle. The summary page is white on the accent."""
    width, height = size
    margin, pad, bar_gap = round(72 * scale), round(56 * scale), round(76 * scale)
    summary = page.kind == "summary"
    top, bottom = margin + round(100 * scale), height - margin  # below the badge
    box = (width - 2 * margin, height * 0.2)
    heading = fonts.fit_text(page.title, pair.bold, box, 76 * scale, 44 * scale, balance=True)
    box = (width - 2 * (margin + pad), bottom - top - heading.height - bar_gap - 2 * pad)
    body = fonts.fit_text(page.body, pair.regular, box, 50 * scale, 28 * scale, bullets=True)
    panel_h = body.height + 2 * pad if body.lines else 0
    y = top + round(max(0, bottom - top - heading.height - bar_gap - panel_h) * 0.3)
    for line in heading.lines:
        colour = (255, 255, 255) if summary else palette.ink
        draw.text((margin, y), line.text, font=heading.font, fill=colour)
        y += heading.line_height
    bar = (margin, y + 14 * scale, margin + 120 * scale, y + 28 * scale)
    draw.rounded_rectangle(
        bar, radius=7 * scale, fill=(255, 255, 255) if summary else palette.accent
    )
    y += bar_gap
    if not body.lines:
        return
    draw.rounded_rectangle(
        (margin, y, width - margin, y + panel_h), radius=round(40 * scale), fill=(255, 255, 255)
    )
    x, y = margin + pad, y + pad
    for line in body.lines:
        if line.bullet:
            r, cy = body.size * 0.17, y + body.size * 0.72
            draw.ellipse((x + r, cy - r, x + 3 * r, cy + r), fill=palette.accent)
        # On the summary, the closing call to action (a line without bullet) stands out.
        colour = palette.accent if summary and not line.indented else palette.ink
        draw.text((x + body.indent * line.indented, y), line.text, font=body.font, fill=colour)
        y += body.line_height


def _draw_badge(draw, page, width, scale, face, palette, summary) -> None:
    """The page number ("3/8") in a pill, top right."""
    label = f"{page.index + 1}/{page.count}" if page.count else str(page.index + 1)
    font = fonts.load_font(face, round(34 * scale))
    pad_x, pad_y, margin = 26 * scale, 14 * scale, 56 * scale
    box = (
        width - margin - font.getlength(label) - 2 * pad_x,
        margin,
        width - margin,
        margin + 34 * scale + 2 * pad_y,
    )
    fill, ink = ((255, 255, 255), palette.accent) if summary else (palette.accent, (255, 255, 255))
    draw.rounded_rectangle(box, radius=(box[3] - box[1]) / 2, fill=fill)
    draw.text(
        ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), label, font=font, fill=ink, anchor="mm"
    )


# --------------------------------------------------------------------- provider


class LocalOptions(ProviderOptions):
    """Options of the offline provider; every field is optional."""

    font_path: str | None = None  # force this font file for all card text
    font_index: int = Field(0, ge=0)  # the face inside a .ttc `font_path`
    long_side: int = Field(1440, ge=256, le=4096)  # card size when only a ratio is given

    @field_validator("font_path")
    @classmethod
    def _font_exists(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"font file not found: {value}")
        return value


@register("local")
class LocalProvider(TextProvider, ImageProvider):
    """Offline outline writer and page-card renderer: no network, no keys, deterministic."""

    Options = LocalOptions
    options: LocalOptions

    async def chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str:
        task = flow_task(messages)
        if task == "post_copy":
            return write_copy(last_user_text(messages))
        if task == "post_edit":
            return answer_edit(last_user_text(messages))
        text = last_user_text(messages).strip()
        if text.startswith("### Task:"):
            return answer_task(text)
        topic, requested = extract_request(text)
        return write_outline(topic, page_count_for(topic, requested))

    async def stream_chat(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        # One delta per page, so a streaming client sees the outline grow (a JSON answer
        # has no page separator and comes as one delta).
        text = await self.chat(messages)
        for i, piece in enumerate(text.split(PAGE_SEPARATOR)):
            yield piece if i == 0 else PAGE_SEPARATOR + piece

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        if request.mask is not None:
            raise InvalidRequest(
                "The offline provider draws cards and cannot apply a mask", param="mask"
            )
        return await anyio.to_thread.run_sync(self._render_all, request)

    def _fonts(self) -> fonts.FontPair:
        if self.options.font_path:
            return fonts.font_for_path(self.options.font_path, self.options.font_index)
        return fonts.find_cjk_font() or fonts.find_latin_font()

    def _render_all(self, request: ImageRequest) -> list[ImageData]:
        page = page_content(request)
        size = card_size(request.size, request.aspect_ratio, self.options.long_side)
        palette = palette_for(page.topic, request.references[0] if request.references else None)
        pair = self._fonts()  # first call scans the font folders: keep it off the loop too
        return [
            ImageData(render_card(page, size, pair, palette, variant), "image/png")
            for variant in range(max(1, min(request.n, 10)))
        ]
