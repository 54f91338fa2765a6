"""Chat commands on an existing post: regexes, the text model's answer, renumbering."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway.flow.commands import (
    EDIT_SYSTEM_PROMPT,
    EDIT_TASK_MARKER,
    MAX_ACTIONS,
    OPS,
    Edit,
    build_edit_messages,
    check_edits,
    describe,
    parse_command,
    parse_edit_answer,
    sequential,
)

# ------------------------------------------------------------ parse_command


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # regenerate
        ("重新生成第3页", [Edit("regenerate", 3)]),
        ("第3页重新生成", [Edit("regenerate", 3)]),
        ("把第 3 页重画一下", [Edit("regenerate", 3)]),
        ("重画P3", [Edit("regenerate", 3)]),
        ("请帮我重新生成第3页的图片吧！", [Edit("regenerate", 3)]),
        ("regenerate page 3", [Edit("regenerate", 3)]),
        ("Redraw page 3 please", [Edit("regenerate", 3)]),
        ("regenerate the third page", [Edit("regenerate", 3)]),
        ("redo page three", [Edit("regenerate", 3)]),
        ("try page 3 again", [Edit("regenerate", 3)]),
        ("retry p3", [Edit("regenerate", 3)]),
        # retry
        ("重试", [Edit("retry")]),
        ("再试一次", [Edit("retry")]),
        ("重试失败的页面", [Edit("retry")]),
        ("失败的重新生成", [Edit("retry")]),
        ("retry", [Edit("retry")]),
        ("Try again.", [Edit("retry")]),
        ("retry failed pages", [Edit("retry")]),
        # edit
        ("第2页改成：新的标题\n• 要点", [Edit("edit", 2, text="新的标题\n• 要点")]),
        ("第2页改为咖啡豆的保存", [Edit("edit", 2, text="咖啡豆的保存")]),
        ("把第2页改成咖啡豆的保存", [Edit("edit", 2, text="咖啡豆的保存")]),
        ("第二页的标题改成：手冲入门", [Edit("edit", 2, text="手冲入门")]),
        ("page 2: How to store beans", [Edit("edit", 2, text="How to store beans")]),
        ("change page 2 to How to store beans", [Edit("edit", 2, text="How to store beans")]),
        ("Change page 2 to: Storage, part two", [Edit("edit", 2, text="Storage, part two")]),
        ("page 2 should say: Grind fresh", [Edit("edit", 2, text="Grind fresh")]),
        # cover
        ("换个封面", [Edit("cover")]),
        ("换一张封面吧", [Edit("cover")]),
        ("封面重新生成", [Edit("cover")]),
        ("重新画封面", [Edit("cover")]),
        ("new cover", [Edit("cover")]),
        ("Another cover please", [Edit("cover")]),
        ("redraw the cover", [Edit("cover")]),
        # add
        ("加一页关于咖啡豆保存的内容", [Edit("add", None, text="关于咖啡豆保存的内容")]),
        ("再加一页：咖啡豆怎么保存", [Edit("add", None, text="咖啡豆怎么保存")]),
        ("在第3页后面加一页：器具清单", [Edit("add", 4, text="器具清单")]),
        ("在第3页前加一页，器具清单", [Edit("add", 3, text="器具清单")]),
        ("在最后加一页：常见问题", [Edit("add", None, text="常见问题")]),
        ("add a page about storing beans", [Edit("add", None, text="about storing beans")]),
        ("add one more page: FAQ", [Edit("add", None, text="FAQ")]),
        ("add a page after page 3: Tools", [Edit("add", 4, text="Tools")]),
        ("Add a new page before page 2: Tools", [Edit("add", 2, text="Tools")]),
        ("add a page as page 5: Tools", [Edit("add", 5, text="Tools")]),
        # delete
        ("删除第4页", [Edit("delete", 4)]),
        ("第4页删掉", [Edit("delete", 4)]),
        ("不要第4页了", [Edit("delete", 4)]),
        ("delete page 4", [Edit("delete", 4)]),
        ("Remove page four.", [Edit("delete", 4)]),
        # move
        ("把第5页移到第2页", [Edit("move", 5, to=2)]),
        ("第5页挪到第2页的位置", [Edit("move", 5, to=2)]),
        ("把第5页移到第2页前面", [Edit("move", 5, to=2)]),
        ("把第5页移到第2页后面", [Edit("move", 5, to=3)]),
        ("把第2页移到第5页后面", [Edit("move", 2, to=5)]),
        ("把第2页移到第5页前面", [Edit("move", 2, to=4)]),
        ("move page 5 to 2", [Edit("move", 5, to=2)]),
        ("move page 5 to position 2", [Edit("move", 5, to=2)]),
        ("move page 5 to the second position", [Edit("move", 5, to=2)]),
        ("move page 5 after page 2", [Edit("move", 5, to=3)]),
        ("move page 2 before page 5", [Edit("move", 2, to=4)]),
        # generate
        ("生成", [Edit("generate")]),
        ("开始生成", [Edit("generate")]),
        ("好的，生成吧", [Edit("generate")]),
        ("没问题，开始画", [Edit("generate")]),
        ("开始吧", [Edit("generate")]),
        ("generate", [Edit("generate")]),
        ("OK, generate the images", [Edit("generate")]),
        ("go ahead", [Edit("generate")]),
    ],
)
def test_commands(text, expected):
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "pages"),
    [
        ("重新生成第2、3页", [2, 3]),
        ("重新生成第2页和第3页", [2, 3]),
        ("第二、三、五页重新生成", [2, 3, 5]),
        ("重画第2-4页", [2, 3, 4]),
        ("重新生成第二到第四页", [2, 3, 4]),
        ("重新生成P2、P3", [2, 3]),
        ("regenerate pages 2 and 3", [2, 3]),
        ("regenerate pages 2, 3, and 5", [2, 3, 5]),
        ("redraw pages 2-4", [2, 3, 4]),
        ("redraw pages two to four", [2, 3, 4]),
        ("regenerate page 2 and page 3", [2, 3]),
        ("regenerate the second and third pages", [2, 3]),
        ("重新生成第3、3页", [3]),
    ],
)
def test_several_pages(text, pages):
    assert parse_command(text) == [Edit("regenerate", p) for p in pages]


def test_several_pages_delete_keeps_the_users_numbers():
    assert parse_command("删除第2、3页") == [Edit("delete", 2), Edit("delete", 3)]
    assert parse_command("delete pages 2 and 3") == [Edit("delete", 2), Edit("delete", 3)]


@pytest.mark.parametrize(
    ("numeral", "value"),
    [
        ("一", 1),
        ("二", 2),
        ("两", 2),
        ("三", 3),
        ("九", 9),
        ("十", 10),
        ("十一", 11),
        ("十五", 15),
        ("十九", 19),
        ("二十", 20),
        ("３", 3),
        ("12", 12),
    ],
)
def test_chinese_and_fullwidth_numerals(numeral, value):
    assert parse_command(f"重新生成第{numeral}页") == [Edit("regenerate", value)]


@pytest.mark.parametrize("bad", ["第零页", "第0页", "第十十页", "第一百页", "第100页"])
def test_impossible_page_numbers_are_not_commands(bad):
    assert parse_command(f"重新生成{bad}") is None


def test_page_numbers_past_the_post_are_left_to_check_edits():
    assert parse_command("重新生成第三十五页") == [Edit("regenerate", 35)]
    with pytest.raises(ValueError, match="no page 35"):
        check_edits([Edit("regenerate", 35)], 6)


def test_several_commands_in_one_message():
    assert parse_command("删除第4页，然后重新生成第2页") == [
        Edit("delete", 4),
        Edit("regenerate", 2),
    ]
    assert parse_command("delete page 4; new cover") == [Edit("delete", 4), Edit("cover")]
    # one part is not a command: the whole message goes to the text model
    assert parse_command("删除第4页，顺便把配色改成蓝色") is None


def test_edit_text_keeps_the_users_characters():
    (edit,) = parse_command("第２页改成：咖啡，真好喝！（手冲）")
    assert edit == Edit("edit", 2, text="咖啡，真好喝！（手冲）")


@pytest.mark.parametrize(
    "text",
    [
        "第2页改成更简洁一点",
        "第2页改成英文",
        "把第3页改得详细一些",
        "change page 2 to be shorter",
        "change page 2 to something more fun",
        "第2页：字太多了",  # a remark, not new text: the text model decides
        "加一页",  # no text for the new page
        "add a page",
        "重新生成",  # which pages? the text model decides
        "换个封面，用蓝色的",
    ],
)
def test_requests_the_regexes_leave_to_the_text_model(text):
    assert parse_command(text) is None


@pytest.mark.parametrize(
    "topic",
    [
        "3页的咖啡入门",
        "咖啡入门 5页",
        "写一篇5页的咖啡笔记",
        "十二页的旅行攻略",
        "生成一篇关于咖啡的笔记",
        "生成5页的咖啡入门",
        "画一只猫",
        "如何删除微信聊天记录",
        "删除线怎么用",
        "换季护肤",
        "重新开始健身的第一周",
        "第一次去日本旅行",
        "a 5 page guide to tea",
        "coffee tips in 5 pages",
        "a 7-page guide to tea",
        "Page layout tips for designers",
        "add page numbers in Word",
        "how to delete a page in Word",
        "move to Japan on a budget",
        "generate passive income",
        "start a podcast",
        "retry logic in Python",
        "new cover letter tips",
        "",
        "   ",
    ],
)
def test_topics_are_not_commands(topic):
    assert parse_command(topic) is None


# ---------------------------------------------------------- the text model


PAGES = [
    ("cover", "咖啡入门\n新手也能做"),
    ("content", "器具\n• 手冲壶"),
    ("content", "步骤\n• 磨豆"),
    ("summary", "总结\n收藏起来"),
]


def test_edit_prompt_lists_every_op():
    assert EDIT_SYSTEM_PROMPT.startswith(EDIT_TASK_MARKER)
    assert '{"actions": [' in EDIT_SYSTEM_PROMPT
    for op in OPS:
        assert f"- {op}：" in EDIT_SYSTEM_PROMPT
    assert "最多 20 个" in EDIT_SYSTEM_PROMPT and MAX_ACTIONS == 20


def test_build_edit_messages_puts_the_post_in_the_system_message():
    messages = build_edit_messages("  第2页写详细一点 ", "咖啡\n入门", PAGES)
    system, user = messages
    assert system["role"] == "system" and system["content"].startswith(EDIT_SYSTEM_PROMPT)
    assert user == {"role": "user", "content": "第2页写详细一点"}
    post = system["content"][len(EDIT_SYSTEM_PROMPT) :]
    assert "主题：咖啡 入门" in post and "共 4 页" in post
    assert "=== 第1页 [封面] ===\n咖啡入门\n新手也能做" in post
    assert "=== 第2页 [内容] ===\n器具" in post
    assert "=== 第4页 [总结] ===\n总结" in post
    assert post.index("第1页") < post.index("第2页") < post.index("第3页") < post.index("第4页")


def actions(*items: dict) -> str:
    return json.dumps({"actions": list(items)}, ensure_ascii=False)


def test_parse_edit_answer_reads_every_op():
    answer = actions(
        {"op": "regenerate", "page": 2},
        {"op": "retry"},
        {"op": "edit", "page": 3, "text": "新步骤\n• 注水"},
        {"op": "cover", "text": "新封面"},
        {"op": "add", "page": 5, "text": "常见问题"},
        {"op": "add", "text": "小贴士"},
        {"op": "move", "page": 4, "to": 2},
        {"op": "delete", "page": 1},
        {"op": "generate"},
    )
    assert parse_edit_answer(answer, 4) == [
        Edit("regenerate", 2),
        Edit("retry"),
        Edit("edit", 3, text="新步骤\n• 注水"),
        Edit("cover", text="新封面"),
        Edit("add", 5, text="常见问题"),
        Edit("add", None, text="小贴士"),
        Edit("move", 4, to=2),
        Edit("delete", 1),
        Edit("generate"),
    ]


def test_parse_edit_answer_new_post():
    answer = actions({"op": "new_post", "text": "露营装备"})
    assert parse_edit_answer(answer, 4) == [Edit("new_post", text="露营装备")]


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{a}\n```",
        "好的，我理解了：\n{a}\n以上。",
        "Sure! {a}",
        "{a}",
    ],
)
def test_parse_edit_answer_tolerates_fences_and_prose(wrap):
    answer = wrap.replace("{a}", actions({"op": "delete", "page": 2}))
    assert parse_edit_answer(answer, 4) == [Edit("delete", 2)]


def test_parse_edit_answer_accepts_common_slips():
    # a bare list, a single action, string numbers, op aliases and case, tags in text
    assert parse_edit_answer('[{"op": "Remove", "page": "2"}]', 4) == [Edit("delete", 2)]
    assert parse_edit_answer('{"op": "redraw", "page": 2.0}', 4) == [Edit("regenerate", 2)]
    answer = actions({"action": "rewrite", "page": 2, "text": "[内容]\n新文字", "to": 3})
    assert parse_edit_answer(answer, 4) == [Edit("edit", 2, text="新文字")]
    # a failed page named by number is a redraw of it; fields an op does not use go
    assert parse_edit_answer(actions({"op": "retry", "page": 3}), 4) == [Edit("regenerate", 3)]
    assert parse_edit_answer(actions({"op": "cover", "page": 1}), 4) == [Edit("cover")]
    assert parse_edit_answer(actions({"op": "generate", "page": 9, "text": "x"}), 4) == [
        Edit("generate")
    ]
    assert parse_edit_answer('{"edits": [{"op": "delete", "page": 2,},]}', 4) == [Edit("delete", 2)]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("我不太明白你的意思。", "couldn't read that change"),
        ('{"result": "ok"}', "couldn't read that change"),
        ('{"actions": "delete page 2"}', "couldn't read that change"),
        ('{"actions": ["delete page 2"]}', "couldn't read that change"),
        ('{"actions": []}', "couldn't tell what to change"),
        (actions(*[{"op": "regenerate", "page": 1}] * 21), "At most 20 changes"),
        (actions({"op": "recolor", "page": 2}), "Unknown change “recolor”"),
        (actions({"page": 2}), "Unknown change “\\?”"),
        (actions({"op": "delete", "page": "three"}), "must be numbers, got “three”"),
        (actions({"op": "delete", "page": True}), "must be numbers, got “True”"),
        (actions({"op": "delete", "page": 2.5}), "must be numbers"),
        (actions({"op": "regenerate"}), "“regenerate” needs a page number"),
        (actions({"op": "delete"}), "“delete” needs a page number"),
        (actions({"op": "edit", "text": "x"}), "“edit” needs a page number"),
        (actions({"op": "move", "to": 2}), "“move” needs a page number"),
        (actions({"op": "regenerate", "page": 0}), "no page 0 \\(the post has 4 pages\\)"),
        (actions({"op": "regenerate", "page": 5}), "no page 5 \\(the post has 4 pages\\)"),
        (actions({"op": "delete", "page": 5}), "no page 5"),
        (actions({"op": "edit", "page": 9, "text": "x"}), "no page 9"),
        (actions({"op": "move", "page": 9, "to": 1}), "no page 9"),
        (actions({"op": "add", "page": 6, "text": "x"}), "positions 1 to 5"),
        (actions({"op": "add", "page": 0, "text": "x"}), "positions 1 to 5"),
        (actions({"op": "add", "page": 2}), "A new page needs its text"),
        (actions({"op": "add", "text": "  "}), "A new page needs its text"),
        (actions({"op": "edit", "page": 2}), "Editing page 2 needs the new text"),
        (actions({"op": "edit", "page": 2, "text": "[内容]"}), "Editing page 2 needs"),
        (actions({"op": "move", "page": 2}), "Moving page 2 needs a target"),
        (actions({"op": "move", "page": 2, "to": 5}), "can't move to position 5"),
        (actions({"op": "new_post"}), "new topic is empty"),
        (
            actions({"op": "new_post", "text": "猫"}, {"op": "delete", "page": 2}),
            "can't be combined",
        ),
        (
            actions({"op": "delete", "page": 2}, {"op": "edit", "page": 2, "text": "x"}),
            "Page 2 is deleted earlier",
        ),
        (
            actions({"op": "delete", "page": 2}, {"op": "delete", "page": 2}),
            "Page 2 is deleted earlier",
        ),
        (actions(*[{"op": "delete", "page": p} for p in range(1, 5)]), "can't lose every page"),
    ],
)
def test_parse_edit_answer_validation(answer, message):
    with pytest.raises(ValueError, match=message):
        parse_edit_answer(answer, 4)


def test_validation_messages_in_chinese():
    with pytest.raises(ValueError, match="没有第9页（这篇笔记共4页）"):
        parse_edit_answer(actions({"op": "delete", "page": 9}), 4, lang="zh")
    with pytest.raises(ValueError, match="没能理解"):
        parse_edit_answer("嗯……", 4, lang="zh-CN")


def test_add_may_take_the_position_after_the_last_page():
    assert parse_edit_answer(actions({"op": "add", "page": 5, "text": "x"}), 4) == [
        Edit("add", 5, text="x")
    ]


def test_check_edits_validates_parse_command_results():
    edits = parse_command("删除第2、3页")
    assert check_edits(edits, 4) == edits
    with pytest.raises(ValueError, match="没有第3页"):
        check_edits(edits, 2, lang="zh")


# ------------------------------------------------------------- sequential


def test_sequential_renumbers_deletes_and_adds():
    edits = [Edit("delete", 2), Edit("delete", 3), Edit("regenerate", 4)]
    assert sequential(edits, 4) == [Edit("delete", 2), Edit("delete", 2), Edit("regenerate", 2)]
    edits = [Edit("add", 2, text="a"), Edit("regenerate", 3), Edit("add", 5, text="end")]
    assert sequential(edits, 4) == [
        Edit("add", 2, text="a"),
        Edit("regenerate", 4),
        Edit("add", 6, text="end"),
    ]


def test_sequential_places_an_add_without_page():
    edit = Edit("add", None, text="x")
    assert sequential([edit], 4, last_is_summary=True) == [Edit("add", 4, text="x")]
    assert sequential([edit], 4) == [Edit("add", 5, text="x")]


def test_sequential_moves():
    # 1 2 3 4 5 6 → delete 3 → 1 2 4 5 6 → move 6 to where 2 is → 1 6 2 4 5
    edits = [Edit("delete", 3), Edit("move", 6, to=2), Edit("regenerate", 4)]
    assert sequential(edits, 6) == [
        Edit("delete", 3),
        Edit("move", 5, to=2),
        Edit("regenerate", 4),
    ]
    # moving down lands after the named page: 1 2 3 4 → 1 3 4 2
    assert sequential([Edit("move", 2, to=4)], 4) == [Edit("move", 2, to=4)]
    assert sequential([Edit("move", 2, to=2)], 4) == [Edit("move", 2, to=2)]


def test_sequential_leaves_page_free_ops_alone():
    edits = [Edit("retry"), Edit("cover"), Edit("generate")]
    assert sequential(edits, 3) == edits


# ---------------------------------------------------------------- describe


ALL = [
    Edit("regenerate", 3),
    Edit("retry"),
    Edit("edit", 2, text="新的标题\n• 要点"),
    Edit("cover"),
    Edit("add", 4, text="常见问题"),
    Edit("add", None, text="x" * 40),
    Edit("delete", 4),
    Edit("move", 5, to=2),
    Edit("generate"),
    Edit("new_post", text="露营装备"),
]


def test_describe_in_chinese():
    assert describe(ALL, "zh").splitlines() == [
        "- 第3页：重新生成",
        "- 失败的页面：重新生成",
        "- 第2页：改为「新的标题」，重新生成",
        "- 封面：换一张",
        "- 新增第4页：「常见问题」",
        "- 新增一页：「" + "x" * 29 + "…」",
        "- 第4页：删除",
        "- 第5页：移到第2页",
        "- 开始生成图片",
        "- 新笔记：「露营装备」",
    ]


def test_describe_in_english():
    assert describe(ALL, "en").splitlines() == [
        "- Page 3: redraw",
        "- Failed pages: redraw",
        "- Page 2: new text “新的标题”, redraw",
        "- Cover: new version",
        "- New page 4: “常见问题”",
        "- New page: “" + "x" * 29 + "…”",
        "- Page 4: delete",
        "- Page 5: move to 2",
        "- Drawing the pages",
        "- New post: “露营装备”",
    ]
    assert (
        describe([Edit("cover", text="Fall nails")], "en")
        == "- Cover: new version with text “Fall nails”"
    )


def test_edit_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Edit("delete", 2).page = 3  # type: ignore[misc]
