"""Multi-turn chat on a post: the next turn acts on the post named in the history."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.gateway.test_runner import (  # noqa: F401 - fixtures
    Script,
    fake_types,
    script,
    settings,
)

IMAGE_MD = re.compile(r"!\[([^\]]*?)(?: · [^\]]*)?\]\((http[^)]+)\)")
LINK_DEF = re.compile(r"^\[(post_[\w-]+)\]: (\S+)$", re.M)


async def ask(client, messages: list[dict], model: str = "redink") -> dict:
    r = await client.post("/v1/chat/completions", json={"model": model, "messages": messages})
    assert r.status_code == 200, r.text
    return r.json()


def turn(history: list[dict], answer: dict, text: str) -> list[dict]:
    content = answer["choices"][0]["message"]["content"]
    return [*history, {"role": "assistant", "content": content}, {"role": "user", "content": text}]


def content_of(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def images_in(answer: dict) -> list[str]:
    return [url for _, url in IMAGE_MD.findall(content_of(answer))]


@pytest.fixture
async def first(client, script: Script):
    """Turn 1: a 4-page post, completed."""
    script.outline_pages = 4
    history = [{"role": "user", "content": "秋天的咖啡馆探店"}]
    answer = await ask(client, history)
    assert answer["post"]["status"] == "completed"
    script.image_calls.clear()
    return history, answer


async def test_regenerate_page_redraws_only_that_page(client, script: Script, first) -> None:
    history, answer = first
    before = images_in(answer)
    again = await ask(client, turn(history, answer, "重新生成第3页"))
    content = content_of(again)
    assert "第3页：重新生成" in content
    assert [c.page_index for c in script.image_calls] == [2]
    after = images_in(again)
    assert len(after) == 4 and after[2] != before[2]
    assert [u for i, u in enumerate(after) if i != 2] == [u for i, u in enumerate(before) if i != 2]
    # the same post, shown whole, with its copy and download link
    assert again["post"]["id"] == answer["post"]["id"]
    assert LINK_DEF.search(content)[1] == answer["post"]["id"]
    assert "### 发布文案" in content and "/download?expires=" in content


async def test_edit_page_text_and_redraw(client, script: Script, first) -> None:
    history, answer = first
    again = await ask(client, turn(history, answer, "第2页改成：手冲咖啡的三个步骤"))
    assert [c.page_index for c in script.image_calls] == [1]
    assert "手冲咖啡的三个步骤" in script.image_calls[0].prompt
    assert again["post"]["pages"][1]["text"] == "手冲咖啡的三个步骤"
    assert again["post"]["status"] == "completed"


async def test_new_cover_and_add_page(client, script: Script, first) -> None:
    history, answer = first
    cover = await ask(client, turn(history, answer, "换个封面"))
    assert [c.page_index for c in script.image_calls] == [0]
    assert images_in(cover)[0] != images_in(answer)[0]
    script.image_calls.clear()
    added = await ask(client, turn(history, answer, "加一页：店里的隐藏菜单"))
    pages = added["post"]["pages"]
    # added before the summary page, drawn with the cover as reference
    assert len(pages) == 5 and pages[3]["text"] == "店里的隐藏菜单"
    assert pages[4]["type"] == "summary"
    assert [c.page_index for c in script.image_calls] == [3]
    assert script.image_calls[0].references


async def test_retry_failed_pages(client, script: Script) -> None:
    script.outline_pages = 3
    script.policy = {1}
    history = [{"role": "user", "content": "weekend picnic"}]
    answer = await ask(client, history)
    assert answer["post"]["status"] == "partial"
    assert "Page 2 failed" in content_of(answer)
    script.policy = set()
    script.image_calls.clear()
    again = await ask(client, turn(history, answer, "retry"))
    assert [c.page_index for c in script.image_calls] == [1]
    assert again["post"]["status"] == "completed" and len(images_in(again)) == 3


async def test_free_text_goes_through_the_text_model(client, script: Script, first) -> None:
    history, answer = first
    script.edit_answer = json.dumps(
        {"actions": [{"op": "delete", "page": 2}, {"op": "edit", "page": 3, "text": "新的第三页"}]}
    )
    again = await ask(client, turn(history, answer, "第二页不要了，第三页写得更具体"))
    # the text model saw the instruction with the post, and its JSON was applied in order
    assert (
        script.edit_calls
        and script.edit_calls[-1][-1]["content"] == "第二页不要了，第三页写得更具体"
    )
    pages = again["post"]["pages"]
    assert len(pages) == 3 and pages[1]["text"] == "新的第三页"
    assert [c.page_index for c in script.image_calls] == [1]


async def test_an_invalid_model_edit_is_explained(client, script: Script, first) -> None:
    history, answer = first
    script.edit_answer = json.dumps({"actions": [{"op": "delete", "page": 9}]})
    again = await ask(client, turn(history, answer, "把最后那页删了吧"))
    assert "⚠️" in content_of(again) and script.image_calls == []
    assert len(again["post"]["pages"]) == 4  # nothing changed


async def test_a_new_topic_in_the_conversation_starts_a_new_post(
    client, script: Script, first
) -> None:
    history, answer = first
    script.edit_answer = json.dumps({"actions": [{"op": "new_post", "text": "冬天的火锅"}]})
    again = await ask(client, turn(history, answer, "冬天的火锅"))
    assert again["post"]["id"] != answer["post"]["id"]
    assert again["post"]["topic"] == "冬天的火锅" and again["post"]["status"] == "completed"


async def test_plan_then_edit_then_generate(client, script: Script) -> None:
    script.outline_pages = 3
    history = [{"role": "user", "content": "tea for beginners"}]
    plan = await ask(client, history, model="redink-plan")
    assert plan["post"]["status"] == "draft" and script.image_calls == []
    assert 'say "generate"' in content_of(plan)
    edited = await ask(
        client, turn(history, plan, "page 2: Green, black and oolong"), "redink-plan"
    )
    assert script.image_calls == []  # planning: text only
    assert edited["post"]["pages"][1]["text"] == "Green, black and oolong"
    assert edited["post"]["status"] == "draft"
    history = turn(history, plan, "page 2: Green, black and oolong")
    drawn = await ask(client, turn(history, edited, "generate"), "redink-plan")
    assert sorted(c.page_index for c in script.image_calls) == [0, 1, 2]
    assert drawn["post"]["status"] == "completed" and len(images_in(drawn)) == 3
    assert any("Green, black and oolong" in c.prompt for c in script.image_calls)


async def test_someone_elses_post_in_the_history_is_not_touched(
    client, script: Script, first, services
) -> None:
    history, answer = first
    _, other = await services.keys.create("bob")
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": turn(history, answer, "重新生成第3页")},
        headers={"Authorization": f"Bearer {other}"},
    )
    body = r.json()
    assert body["post"]["id"] != answer["post"]["id"]  # read as a new topic, for bob
    assert body["post"]["topic"] == "重新生成第3页"


async def test_streamed_follow_up_shows_progress(client, script: Script, first) -> None:
    history, answer = first
    payload = {"model": "redink", "stream": True, "messages": turn(history, answer, "redo page 2")}
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                if delta:
                    text += delta[0]["delta"].get("content") or ""
    assert "⏳" in text and "✓ 第2页完成" in text
    assert text.index("第2页：重新生成") < text.index("**大纲**")


async def test_asking_while_generating_follows_the_running_job(client, script: Script) -> None:
    script.outline_pages = 3
    script.delay = 0.4
    post = (await client.post("/v1/posts", json={"topic": "秋天的咖啡馆"})).json()
    # a conversation whose answer was cut off after the first line (the post's link)
    link = f"[{post['id']}]: http://testserver/v1/posts/{post['id']}/download?expires=1&sig=x"
    messages = [
        {"role": "user", "content": "秋天的咖啡馆"},
        {"role": "assistant", "content": link},
        {"role": "user", "content": "好了吗"},
    ]
    answer = await asyncio.wait_for(ask(client, messages), 20)
    assert answer["post"]["id"] == post["id"] and answer["post"]["status"] == "completed"
    assert len(images_in(answer)) == 3
    assert sorted(c.page_index for c in script.image_calls) == [0, 1, 2]  # drawn once
