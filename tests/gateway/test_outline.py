from __future__ import annotations

import pytest

from gateway.flow.outline import (
    OUTLINE_SYSTEM_PROMPT,
    OutlinePage,
    build_outline_messages,
    outline_text,
    parse_outline,
    requested_page_count,
)
from gateway.flow.prompts import build_image_prompt


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("秋季显白美甲，5页", 5),
        ("秋季显白美甲 5 页", 5),
        ("写一篇五页的咖啡笔记", 5),
        ("十二页的旅行攻略", 12),
        ("coffee tips in 5 pages", 5),
        ("a 7-page guide to tea", 7),
        ("一页", 2),  # clamped up
        ("30 pages of everything", 18),  # clamped down
        ("秋季显白美甲", None),
        ("best coffee in town", None),
    ],
)
def test_requested_page_count(topic: str, expected: int | None) -> None:
    assert requested_page_count(topic) == expected


def test_parse_outline_tags_and_indices() -> None:
    text = "[封面]\n标题：秋季美甲\n副标题：显白\n<page>\n[内容]\n第一点\n<PAGE>\n\n<page>\n[总结]\n收藏！"
    pages = parse_outline(text)
    assert [p.index for p in pages] == [0, 1, 2]
    assert [p.type for p in pages] == ["cover", "content", "summary"]
    assert pages[0].text.startswith("标题：秋季美甲")
    assert pages[0].title == "秋季美甲"
    assert "<page>" not in "".join(p.text for p in pages)


def test_parse_outline_falls_back_to_dashes_and_unknown_tags() -> None:
    text = "Cover title\n---\n[weird] something\n---\n   \n---\n[总结] bye"
    pages = parse_outline(text)
    assert [p.type for p in pages] == ["cover", "content", "summary"]
    assert pages[1].text == "[weird] something"


def test_parse_outline_moves_tagged_cover_first_and_clamps() -> None:
    text = (
        "[内容] a\n<page>\n[封面] the cover\n<page>\n[内容] b\n<page>\n[内容] c\n<page>\n[总结] d"
    )
    pages = parse_outline(text, max_pages=3)
    assert len(pages) == 3
    assert pages[0].type == "cover" and pages[0].text == "the cover"
    assert sum(p.type == "cover" for p in pages) == 1


def test_parse_outline_strips_pipes_and_code_fences() -> None:
    pages = parse_outline("```\n[封面] a | b\n<page>\n[内容] c\n```")
    assert pages[0].text == "a / b"
    assert all("|" not in p.text and "```" not in p.text for p in pages)


def test_parse_outline_empty() -> None:
    assert parse_outline("  \n<page>\n  ") == []


def test_outline_text_round_trips() -> None:
    pages = [
        OutlinePage(0, "cover", "T\nS"),
        OutlinePage(1, "content", "x"),
        OutlinePage(2, "summary", "y"),
    ]
    assert parse_outline(outline_text(pages)) == pages


def test_outline_messages_carry_topic_count_and_references() -> None:
    messages = build_outline_messages("咖啡", 5, ["data:image/png;base64,AAAA"])
    assert messages[0]["role"] == "system"
    assert messages[0]["content"] == OUTLINE_SYSTEM_PROMPT
    user = messages[1]["content"]
    assert user[0]["text"] == "Topic: 咖啡\nPages: exactly 5"
    assert user[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    plain = build_outline_messages("tea")[1]["content"]
    assert plain == "Topic: tea"


def test_outline_prompt_states_the_rules() -> None:
    for rule in (
        "<page>",
        "[封面]",
        "[内容]",
        "[总结]",
        "6 到 12",
        "2 到 18",
        "不要使用 |",
        "直接从封面开始",
    ):
        assert rule in OUTLINE_SYSTEM_PROMPT


def test_image_prompt_full_and_short() -> None:
    page = OutlinePage(1, "content", "第一点\n细节")
    full = build_image_prompt(
        page, topic="秋季美甲", outline="[封面] x", aspect_ratio="3:4", has_cover_reference=True
    )
    for part in (
        "第一点\n细节",
        "内容",
        "秋季美甲",
        "[封面] x",
        "3:4",
        "logo",
        "水印",
        "手机边框",
        "封面",
    ):
        assert part in full
    short = build_image_prompt(page, topic="秋季美甲", outline="[封面] x", short=True)
    assert "第一点" in short and "[封面] x" not in short and "秋季美甲" not in short
