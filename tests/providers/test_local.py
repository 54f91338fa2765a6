"""The offline `local` provider: outline templates, housekeeping answers, page cards."""

from __future__ import annotations

import io
import json
import logging
import os

import httpx
import pytest
from PIL import Image, ImageChops
from pydantic import ValidationError

from gateway.flow.commands import Edit, build_edit_messages, parse_edit_answer
from gateway.flow.copy import build_copy_messages, parse_copy
from providers import fonts, local
from providers.base import ImageData, ImageRequest
from providers.local import (
    LocalOptions,
    LocalProvider,
    card_size,
    extract_request,
    flow_task,
    palette_for,
)


@pytest.fixture
async def provider():
    async with httpx.AsyncClient() as http:
        yield LocalProvider("local", LocalProvider.Options(), http)


@pytest.fixture
def no_cjk_font(monkeypatch):
    """As on a machine without fonts-noto-cjk, with the once-per-process warning re-armed."""
    monkeypatch.setattr(fonts, "find_cjk_font", lambda search_paths=None: None)
    monkeypatch.setattr(local, "_cjk_warning_issued", False)


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You write outlines."}, {"role": "user", "content": text}]


def pages_of(outline: str) -> list[str]:
    return outline.split("\n<page>\n")


def has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def card(data: ImageData) -> Image.Image:
    assert data.mime == "image/png"
    image = Image.open(io.BytesIO(data.data))
    assert image.format == "PNG"
    return image.convert("RGB")


def dominant(image: Image.Image) -> tuple[int, int, int]:
    return max(image.getcolors(maxcolors=1 << 20))[1]


def hints(**overrides) -> dict:
    base = {
        "title": "周末露营装备全攻略",
        "body": "亲测有效的经验，一次讲明白",
        "page_index": 0,
        "page_count": 6,
        "page_type": "cover",
        "topic": "周末露营",
    }
    return base | overrides


# ------------------------------------------------------------------- outlines


async def test_chinese_topic_gives_a_chinese_outline_in_redink_format(provider):
    outline = await provider.chat(user("Topic: 周末露营装备"))
    pages = pages_of(outline)
    assert outline.startswith("[封面]\n")
    assert pages[-1].startswith("[总结]\n")
    assert all(page.startswith("[内容]\n") for page in pages[1:-1])
    assert "|" not in outline
    assert "周末露营装备" in pages[0]
    assert all(has_cjk(page) for page in pages)
    assert 6 <= len(pages) <= 8
    # every page has a heading and at least one more line
    assert all(len(page.splitlines()) >= 3 for page in pages)


async def test_english_topic_gives_an_english_outline(provider):
    outline = await provider.chat(user("Topic: coffee brewing at home"))
    pages = pages_of(outline)
    assert outline.startswith("[封面]\n")
    assert pages[-1].startswith("[总结]\n")
    assert not has_cjk(outline.replace("[封面]", "").replace("[内容]", "").replace("[总结]", ""))
    assert "coffee brewing at home" in outline.lower()
    assert "|" not in outline


async def test_outline_is_deterministic(provider):
    first = await provider.chat(user("Topic: 秋季显白美甲"))
    assert first == await provider.chat(user("Topic: 秋季显白美甲"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("咖啡 5页", 5),
        ("写一篇关于咖啡的笔记，5页", 5),
        ("五页的旅行攻略", 5),
        ("十二页 健身计划", 12),
        ("coffee tips in 5 pages", 5),
        ("a 4-page guide to sourdough", 4),
        ("Topic: houseplants\nPages: exactly 7", 7),
        ("Topic: 咖啡 3页\nPages: exactly 9", 9),  # the flow's line wins
        ("咖啡 1页", 2),
        ("coffee in 30 pages", 18),
        ("Topic: tea\nPages: exactly 1", 2),
        ("Topic: tea\nPages: exactly 18", 18),
    ],
)
async def test_page_count_is_honoured_and_clamped(provider, text, expected):
    outline = await provider.chat(user(text))
    pages = pages_of(outline)
    assert len(pages) == expected
    assert pages[0].startswith("[封面]") and pages[-1].startswith("[总结]")
    # 18 pages still have distinct headings
    headings = [page.splitlines()[1] for page in pages]
    assert len(set(headings)) == len(headings)


def test_topic_is_cleaned_of_the_request_wording():
    assert extract_request("写一篇关于咖啡的笔记，5页") == ("咖啡", 5)
    assert extract_request("coffee tips in 5 pages") == ("coffee tips", 5)
    assert extract_request("主题：春日穿搭\n页数：4") == ("春日穿搭", 4)
    assert extract_request("write a post about houseplants") == ("houseplants", None)


async def test_a_plain_chat_is_treated_as_a_topic(provider):
    outline = await provider.chat([{"role": "user", "content": "露营"}])
    assert outline.startswith("[封面]") and "露营" in outline


async def test_stream_yields_the_outline_page_by_page(provider):
    messages = user("Topic: tea\nPages: exactly 4")
    pieces = [piece async for piece in provider.stream_chat(messages)]
    assert len(pieces) == 4
    assert "".join(pieces) == await provider.chat(messages)


# ------------------------------------------------------- OpenWebUI housekeeping

HISTORY = "\n### Chat History:\n<chat_history>\nUSER: {q}\nASSISTANT: [封面]\n...\n</chat_history>"


async def test_title_task_answers_json_with_an_emoji_title(provider):
    prompt = (
        "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history."
        '\n### Output:\nJSON format: { "title": "your concise title here" }'
    )
    answer = json.loads(await provider.chat(user(prompt + HISTORY.format(q="咖啡入门 5页"))))
    assert answer["title"].startswith("☕") and "咖啡" in answer["title"]
    answer = json.loads(await provider.chat(user(prompt + HISTORY.format(q="houseplant care"))))
    assert "Houseplant Care" in answer["title"]


async def test_tags_task_answers_json(provider):
    prompt = "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history."
    answer = json.loads(await provider.chat(user(prompt + HISTORY.format(q="coffee"))))
    assert answer["tags"][0] == "General"


async def test_follow_up_task_answers_json(provider):
    prompt = "### Task:\nSuggest 3-5 relevant follow-up questions or prompts the user might ask."
    answer = json.loads(await provider.chat(user(prompt + HISTORY.format(q="咖啡"))))
    assert len(answer["follow_ups"]) >= 2 and has_cjk(answer["follow_ups"][0])


async def test_other_tasks_get_a_short_sentence(provider):
    answer = await provider.chat(user("### Task:\nDo something else entirely."))
    assert answer and "\n" not in answer and not answer.startswith("[封面]")


# ------------------------------------------------------ flow tasks: copy, edits


@pytest.mark.parametrize(
    ("topic", "zh"),
    [("周末露营装备 5页", True), ("houseplant care for beginners", False)],
)
async def test_copy_answer_parses_in_the_topics_language(provider, topic, zh):
    outline = await provider.chat(user(f"Topic: {topic}"))
    answer = await provider.chat(build_copy_messages(topic, outline))
    copy = parse_copy(answer)
    assert json.loads(answer).keys() == {"titles", "copywriting", "tags"}
    assert len(copy.titles) == 3 and all(len(title) <= 20 for title in copy.titles)
    assert 5 <= len(copy.tags) <= 10
    assert all(not tag.startswith("#") and " " not in tag for tag in copy.tags)
    assert "\n\n" in copy.body and "👇" in copy.body
    assert all(has_cjk(text) == zh for text in (copy.titles[1], copy.body, copy.tags[-1]))
    subject = extract_request(topic)[0]
    assert subject in copy.body
    # the body lists the outline's content pages
    second_page = pages_of(outline)[1].splitlines()[1]
    assert second_page[:20] in copy.body
    assert answer == await provider.chat(build_copy_messages(topic, outline))


async def test_copy_without_an_outline_uses_the_template_outline(provider):
    copy = parse_copy(await provider.chat(build_copy_messages("露营", "")))
    assert copy.titles[0].startswith("露营") and copy.body.count("✅") >= 3


async def test_edit_answer_makes_the_instruction_a_new_post(provider):
    pages = [("cover", "咖啡入门"), ("content", "器具"), ("summary", "收藏")]
    for instruction in ("把整体语气改活泼一点", "make it more playful"):
        answer = await provider.chat(build_edit_messages(instruction, "咖啡入门", pages))
        assert parse_edit_answer(answer, len(pages)) == [Edit("new_post", text=instruction)]


async def test_stream_chat_answers_flow_tasks_with_the_same_json(provider):
    for messages in (
        build_copy_messages("tea", "[封面]\nTea\n<page>\n[内容]\nKinds\n<page>\n[总结]\nBye"),
        build_edit_messages("第2页\n<page>\n改短", "tea", [("cover", "Tea")]),
    ):
        pieces = [piece async for piece in provider.stream_chat(messages)]
        assert "".join(pieces) == await provider.chat(messages)
        json.loads("".join(pieces))


def test_flow_task_reads_the_marker_in_the_system_message():
    assert flow_task(build_copy_messages("tea", "")) == "post_copy"
    assert flow_task(build_edit_messages("x", "tea", [])) == "post_edit"
    assert flow_task(user("Topic: tea")) is None
    assert flow_task([{"role": "user", "content": "[inkgate:post_copy] tea"}]) is None
    system_parts = [{"type": "text", "text": "[inkgate:post_edit]"}]
    assert flow_task([{"role": "system", "content": system_parts}]) == "post_edit"


async def test_a_marker_in_the_user_message_still_gets_an_outline(provider):
    outline = await provider.chat([{"role": "user", "content": "[inkgate:post_copy] 露营"}])
    assert outline.startswith("[封面]")


# ---------------------------------------------------------------------- cards


@pytest.mark.parametrize(
    ("size", "ratio", "expected"),
    [
        (None, "3:4", (1080, 1440)),
        (None, "1:1", (1440, 1440)),
        (None, "4:3", (1440, 1080)),
        (None, "9:16", (810, 1440)),
        (None, "16:9", (1440, 810)),
        (None, "nonsense", (1080, 1440)),
        ("1024x1024", "3:4", (1024, 1024)),
        ("auto", "1:1", (1440, 1440)),
    ],
)
def test_card_size(size, ratio, expected):
    assert card_size(size, ratio) == expected


async def test_generate_draws_a_3_4_png_card(provider):
    images = await provider.generate(ImageRequest(prompt="cover", hints=hints()))
    assert len(images) == 1
    image = card(images[0])
    assert image.size == (1080, 1440)
    assert len(image.getcolors(maxcolors=1 << 20)) > 20  # text and shapes, not a blank fill


async def test_generate_honours_an_explicit_size(provider):
    images = await provider.generate(ImageRequest(prompt="t", size="1024x1024", hints=hints()))
    assert card(images[0]).size == (1024, 1024)


async def test_n_images_vary(provider):
    images = await provider.generate(ImageRequest(prompt="t", n=2, hints=hints()))
    assert len(images) == 2
    assert images[0].data != images[1].data


async def test_palette_follows_the_topic(provider):
    colours = []
    for topic in ("周末露营", "coffee brewing"):
        request = ImageRequest(prompt="t", hints=hints(topic=topic, page_type="content"))
        colours.append(dominant(card((await provider.generate(request))[0])))
    assert colours[0] != colours[1]
    assert palette_for("周末露营") == palette_for("周末露营")


def test_palette_takes_the_hue_of_a_reference():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, "PNG")
    reference = ImageData(buffer.getvalue(), "image/png")
    assert palette_for("周末露营", reference).hue == pytest.approx(0.0, abs=0.01)
    broken = ImageData(b"\x89PNG\r\n\x1a\nnot really", "image/png")
    assert palette_for("周末露营", broken) == palette_for("周末露营")


async def test_long_text_is_wrapped_and_shrunk(provider):
    body = "\n".join(f"• 第{i}条：" + "很长的中文内容和 some English words " * 6 for i in range(30))
    request = ImageRequest(
        prompt="t", hints=hints(page_type="content", body=body, title="标题" * 40)
    )
    image = card((await provider.generate(request))[0])
    assert image.size == (1080, 1440)
    assert len(image.getcolors(maxcolors=1 << 20)) > 20


def test_fit_text_wraps_by_width_and_truncates_with_an_ellipsis():
    face = fonts.find_latin_font().regular
    block = fonts.fit_text("word " * 400, face, (400, 300), 40, 20)
    assert block.size == 20
    assert all(block.font.getlength(line.text) <= 400 for line in block.lines)
    assert block.height <= 300
    assert block.lines[-1].text.endswith("…")
    # Latin wraps between words, never inside one
    assert all(set(line.text.rstrip("…").split()) <= {"word"} for line in block.lines)


def _skip_without(reason: str) -> None:
    # CI installs fonts-noto-cjk and sets INKGATE_REQUIRE_CJK_FONT=1: there, fail instead.
    if os.environ.get("INKGATE_REQUIRE_CJK_FONT") == "1":
        pytest.fail(f"{reason}, but INKGATE_REQUIRE_CJK_FONT=1")
    pytest.skip(reason)


def test_wrap_breaks_cjk_per_character():
    pair = fonts.find_cjk_font()
    if pair is None:
        _skip_without("no CJK font installed")
    font = fonts.load_font(pair.regular, 40)
    lines = fonts.wrap("一二三四五六七八九十" * 3, font, 200)
    assert len(lines) == 6 and all(len(line) == 5 for line in lines)
    assert fonts.wrap("你好，世界", font, 80) == ["你好，", "世界"]  # no line starts with "，"


def test_page_content_falls_back_to_the_prompt():
    page = local.page_content(ImageRequest(prompt="[内容]\nWhy it matters\n• one\n• two"))
    assert (page.title, page.body, page.kind) == ("Why it matters", "• one\n• two", "content")


async def test_missing_cjk_font_warns_once_and_draws_no_tofu(provider, no_cjk_font, caplog):
    caplog.set_level(logging.WARNING, logger="inkgate.providers.local")
    for _ in range(2):
        images = await provider.generate(ImageRequest(prompt="t", hints=hints()))
        assert card(images[0]).size == (1080, 1440)
    warnings = [r for r in caplog.records if r.name == "inkgate.providers.local"]
    assert len(warnings) == 1
    assert "fonts-noto-cjk" in warnings[0].getMessage()
    face = fonts.find_latin_font().regular
    assert fonts.drawable("露营 camping ✨", face) == "·· camping "


async def test_chinese_card_uses_the_cjk_font(provider, monkeypatch, caplog):
    pair = fonts.find_cjk_font()
    if pair is None:
        _skip_without("no CJK font installed")
    assert fonts.drawable("周末露营装备全攻略", pair.bold) == "周末露营装备全攻略"
    request = ImageRequest(prompt="t", hints=hints())
    with caplog.at_level(logging.WARNING, logger="inkgate.providers.local"):
        with_font = card((await provider.generate(request))[0])
    assert not caplog.records
    monkeypatch.setattr(fonts, "find_cjk_font", lambda search_paths=None: None)
    monkeypatch.setattr(local, "_cjk_warning_issued", True)  # keep the log quiet
    fallback = card((await provider.generate(request))[0])
    assert ImageChops.difference(with_font, fallback).getbbox() is not None


def test_find_cjk_font_with_no_candidates(tmp_path):
    assert fonts.find_cjk_font([str(tmp_path)]) is None
    assert fonts.find_cjk_font([str(tmp_path / "missing.ttc")]) is None


def test_options_are_validated(tmp_path):
    with pytest.raises(ValidationError):
        LocalOptions(font_path=str(tmp_path / "missing.ttf"))
    with pytest.raises(ValidationError):
        LocalOptions(unknown=1)
    assert LocalProvider.type == "local"


async def test_forced_font_path_is_used(monkeypatch):
    latin = fonts.find_latin_font().regular
    if latin.path is None:
        _skip_without("no font file installed")
    monkeypatch.setattr(local, "_cjk_warning_issued", True)
    async with httpx.AsyncClient() as http:
        forced = LocalProvider("local", LocalOptions(font_path=latin.path), http)
        request = ImageRequest(prompt="t", hints=hints(title="Hello", body="World"))
        assert card((await forced.generate(request))[0]).size == (1080, 1440)
    assert forced._fonts() == fonts.font_for_path(latin.path)


async def test_registry_builds_the_local_provider():
    from providers.registry import ProviderConfigError, build_provider

    async with httpx.AsyncClient() as http:
        built = build_provider("local", "local", {}, http)
        assert isinstance(built, LocalProvider)
        with pytest.raises(ProviderConfigError, match="font file not found"):
            build_provider("local", "local", {"font_path": "/nonexistent.ttf"}, http)
