"""Post copy: the prompt, reading the model's JSON leniently, storing and showing it."""

from __future__ import annotations

import json

import pytest

from gateway.flow.copy import (
    BODY_MAX_CHARS,
    COPY_SYSTEM_PROMPT,
    COPY_TASK_MARKER,
    MAX_TAGS,
    MAX_TITLES,
    TITLE_MAX_CHARS,
    PostCopy,
    build_copy_messages,
    find_json_object,
    parse_copy,
)

GOOD = {
    "titles": ["秋季显白美甲合集💅", "黄皮也能闪闪发光", "做了10次美甲的总结"],
    "copywriting": "黄皮姐妹看过来😭\n\n✅ 焦糖奶茶色\n✅ 酒红色\n\n评论区聊聊👇",
    "tags": ["美甲", "秋季美甲", "显白美甲", "黄皮美甲", "美甲分享"],
}


def answer(**overrides) -> str:
    return json.dumps(GOOD | overrides, ensure_ascii=False)


# ------------------------------------------------------------------- prompt


def test_prompt_asks_for_redinks_json_shape_in_chinese():
    assert COPY_SYSTEM_PROMPT.startswith(COPY_TASK_MARKER)
    for needle in ('"titles"', '"copywriting"', '"tags"', "20 个字", "200 到 500", "5 到 10"):
        assert needle in COPY_SYSTEM_PROMPT
    assert "不要 markdown 代码块" in COPY_SYSTEM_PROMPT
    assert "相同的语言" in COPY_SYSTEM_PROMPT
    assert "不要加 # 号" in COPY_SYSTEM_PROMPT
    # the example in the prompt is itself a valid answer
    example = COPY_SYSTEM_PROMPT.rsplit("示例", 1)[1]
    assert len(parse_copy(example).titles) == 3


def test_build_copy_messages():
    messages = build_copy_messages("  咖啡\n入门 ", "[封面]\n咖啡入门\n<page>\n[总结]\n收藏\n")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == COPY_SYSTEM_PROMPT
    assert (
        messages[1]["content"]
        == "Topic: 咖啡 入门\n\nOutline:\n[封面]\n咖啡入门\n<page>\n[总结]\n收藏"
    )


# -------------------------------------------------------------------- parse


def test_parses_plain_json():
    copy = parse_copy(answer())
    assert copy.titles == GOOD["titles"]
    assert copy.body == GOOD["copywriting"]
    assert copy.tags == GOOD["tags"]


@pytest.mark.parametrize(
    "wrapped",
    [
        "```json\n{a}\n```",
        "```\n{a}\n```",
        "好的，以下是文案：\n```json\n{a}\n```\n希望对你有帮助！",
        "Here you go: {a} Enjoy!",
        "Sure, {{not json}} and then {a}",
    ],
)
def test_fences_and_prose_around_the_json(wrapped):
    copy = parse_copy(wrapped.replace("{a}", answer()))
    assert copy.titles == GOOD["titles"] and copy.tags == GOOD["tags"]


def test_trailing_commas_are_forgiven():
    text = '{"titles": ["A", "B",], "copywriting": "body", "tags": ["x", "y",],}'
    assert parse_copy(text) == PostCopy(["A", "B"], "body", ["x", "y"])


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("#咖啡 #拿铁 #咖啡入门", ["咖啡", "拿铁", "咖啡入门"]),
        ("咖啡, 拿铁，咖啡入门、手冲", ["咖啡", "拿铁", "咖啡入门", "手冲"]),
        ("咖啡 拿铁", ["咖啡", "拿铁"]),
        ("#咖啡#拿铁", ["咖啡", "拿铁"]),
        (["#咖啡", "＃拿铁", " 手冲 "], ["咖啡", "拿铁", "手冲"]),
        (["coffee tips", "latte art"], ["CoffeeTips", "LatteArt"]),
        (["C#", "编程"], ["C#", "编程"]),
        (["咖啡", "咖啡", "Coffee", "coffee"], ["咖啡", "Coffee"]),
        (["ok", "这是一个远远超过二十个字的标签不应该被当成标签使用"], ["ok"]),
        ([1, None, {"x": 1}, "tea"], ["1", "tea"]),
    ],
)
def test_tag_shapes(tags, expected):
    assert parse_copy(answer(tags=tags)).tags == expected


def test_tags_are_capped():
    tags = [f"标签{i}" for i in range(30)]
    assert parse_copy(answer(tags=tags)).tags == tags[:MAX_TAGS]


def test_titles_as_one_string_and_with_numbering_or_labels():
    assert parse_copy(answer(titles="只有一个标题")).titles == ["只有一个标题"]
    assert parse_copy(answer(titles="1. 第一个\n2. 第二个")).titles == ["第一个", "第二个"]
    titles = [
        "标题1（主标题）：秋天美甲",
        "Title 2: Fall nails",
        "“带引号的标题”",
        "  多余   空格 ",
    ]
    assert parse_copy(answer(titles=titles)).titles == [
        "秋天美甲",
        "Fall nails",
        "带引号的标题",
        "多余 空格",
    ]


def test_titles_are_deduped_capped_and_cut():
    titles = [f"标题{i}" for i in range(8)] + ["标题0"]
    assert parse_copy(answer(titles=titles)).titles == titles[:MAX_TITLES]
    long = "很" * 100
    (title,) = parse_copy(answer(titles=[long])).titles
    assert len(title) == TITLE_MAX_CHARS and title.endswith("…")
    # a title a little over the prompt's 20 characters is kept whole for the user
    assert parse_copy(answer(titles=["很" * 24])).titles == ["很" * 24]


def test_title_key_variants_and_body_key_variants():
    text = json.dumps({"title": "One", "body": "Body text", "hashtags": ["a"]})
    assert parse_copy(text) == PostCopy(["One"], "Body text", ["a"])
    text = json.dumps({"Titles": ["One"], "content": ["line 1", "line 2"]})
    assert parse_copy(text) == PostCopy(["One"], "line 1\nline 2", [])


def test_body_is_normalised():
    body = "第一段  \r\n第二段\n\n\n\n第三段\t\n"
    assert parse_copy(answer(copywriting=body)).body == "第一段\n第二段\n\n第三段"
    # an answer whose newlines were escaped twice
    assert parse_copy(answer(copywriting="第一行\\n\\n第二行")).body == "第一行\n\n第二行"


def test_long_body_is_cut_at_a_line_break():
    body = "\n".join(["这是一行比较长的正文内容，用来测试截断。"] * 100)
    cut = parse_copy(answer(copywriting=body)).body
    assert len(cut) <= BODY_MAX_CHARS
    assert cut.endswith("截断。…")


def test_titles_only_or_body_only_are_usable():
    assert parse_copy('{"titles": ["只有标题"]}').body == ""
    assert parse_copy('{"copywriting": "只有正文"}').titles == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("抱歉，我无法完成这个请求。", "not JSON"),
        ("", "not JSON"),
        ('["a", "b"]', "not JSON"),
        ("```json\n{broken\n```", "not JSON"),
        ('{"tags": ["只有标签"]}', "neither a title nor a body"),
        ('{"titles": [], "copywriting": "   "}', "neither a title nor a body"),
        ('{"titles": [{"x": 1}], "copywriting": null}', "neither a title nor a body"),
    ],
)
def test_nothing_usable_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_copy(text)


def test_find_json_object_prefers_objects_and_can_take_lists():
    assert find_json_object('see [1] then {"a": 1}') == {"a": 1}
    assert find_json_object('x [{"op": "retry"}] y', allow_list=True) == [{"op": "retry"}]
    assert find_json_object('x [{"op": "retry"}] y') == {"op": "retry"}
    assert find_json_object('[1] {"a": [2]}', allow_list=True) == {"a": [2]}
    with pytest.raises(ValueError):
        find_json_object("[1, 2]", allow_list=True)


# ---------------------------------------------------------- store and show


def test_json_round_trip_keeps_chinese_readable():
    copy = parse_copy(answer())
    stored = copy.to_json()
    assert "秋季显白美甲" in stored and set(json.loads(stored)) == {"titles", "body", "tags"}
    assert PostCopy.from_json(stored) == copy


def test_from_json_rejects_other_shapes():
    with pytest.raises(ValueError):
        PostCopy.from_json("[1, 2]")
    assert PostCopy.from_json("{}") == PostCopy([], "", [])


def test_markdown_in_chinese():
    text = PostCopy(["标题一", "标题二"], "第一行\n第二行\n\n第二段", ["美甲", "秋季"]).markdown(
        "zh"
    )
    assert text == (
        "### 发布文案\n\n"
        "**标题**\n1. 标题一\n2. 标题二\n\n"
        "**正文**\n第一行  \n第二行\n\n第二段\n\n"
        "**标签**\n#美甲 #秋季"
    )


def test_markdown_in_english_leaves_out_empty_sections():
    text = PostCopy(["Fall nails"], "", ["nails"]).markdown("en")
    assert text == "### Post copy\n\n**Titles**\n1. Fall nails\n\n**Hashtags**\n#nails"
    assert PostCopy([], "Body", []).markdown("zh-CN") == "### 发布文案\n\n**正文**\nBody"
