from __future__ import annotations

import json
import re

import httpx

from tests.conftest import MASTER_KEY

IMAGE_MD = re.compile(
    r"!\[(第\d+页|Page \d+) · [^\]]*\]\((http://testserver/images/img_[\w-]+\.png)\)"
)


def _events(body: str) -> list[str]:
    return [line for line in body.split("\n") if line]


async def test_models_lists_redink(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    ids = [m["id"] for m in r.json()["data"]]
    assert r.json()["object"] == "list"
    assert ids[:2] == ["redink", "redink-plan"]
    assert all(m["object"] == "model" for m in r.json()["data"])
    assert (await client.get("/v1/models/redink")).json()["id"] == "redink"
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_chat_non_stream_returns_markdown_and_post(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": "秋季显白美甲 4页"}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "redink"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    # an invisible link definition names the post first (for the next turn)
    post_id = body["post"]["id"]
    link, _, content = content.partition("\n\n")
    assert re.fullmatch(rf"\[{post_id}\]: http://testserver/v1/posts/{post_id}/download\?\S+", link)
    assert content.startswith("**大纲**（共 4 页）")
    assert "### 发布文案" in content  # the post copy, before the ZIP link
    images = IMAGE_MD.findall(content)
    assert [label for label, _ in images] == ["第1页", "第2页", "第3页", "第4页"]
    assert "⏳" not in content  # progress lines only when streaming
    assert "/download?expires=" in content
    post = body["post"]
    assert post["status"] == "completed" and len(post["pages"]) == 4
    assert [p["index"] for p in post["pages"]] == [0, 1, 2, 3]
    assert post["pages"][0]["type"] == "cover" and post["pages"][-1]["type"] == "summary"
    assert [p["image_url"] for p in post["pages"]] == [url for _, url in images]
    for _, url in images:
        img = await client.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert body["usage"]["total_tokens"] > 0


async def test_chat_stream_shape(client: httpx.AsyncClient) -> None:
    payload = {
        "model": "redink",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "home coffee brewing in 3 pages"}],
    }
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = (await r.aread()).decode()
    lines = _events(body)
    assert lines[-1] == "data: [DONE]"
    for line in lines:
        assert len(line.encode()) < 64 * 1024 and "base64" not in line
    chunks = [json.loads(line[6:]) for line in lines[:-1] if line.startswith("data: ")]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "redink" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "⏳" in text  # progress lines while waiting
    assert [m[0] for m in IMAGE_MD.findall(text)] == ["Page 1", "Page 2", "Page 3"]
    assert text.index("**Outline**") < text.index("![Page 1")
    assert "Download all images (ZIP)" in text


async def test_stream_without_usage_has_no_usage_chunk(client: httpx.AsyncClient) -> None:
    payload = {
        "model": "redink-outline",
        "stream": True,
        "messages": [{"role": "user", "content": "tea"}],
    }
    r = await client.post("/v1/chat/completions", json=payload)
    chunks = [json.loads(x[6:]) for x in _events(r.text) if x.startswith("data: {")]
    assert all("usage" not in c for c in chunks)


async def test_outline_model_returns_only_the_outline(client: httpx.AsyncClient, services) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "redink-outline",
            "messages": [{"role": "user", "content": "露营装备清单 5页"}],
        },
    )
    content = r.json()["choices"][0]["message"]["content"]
    assert "**大纲**（共 5 页）" in content
    assert "![" not in content and "ZIP" not in content
    post = r.json()["post"]
    assert post["status"] == "draft" and all(p["image_url"] is None for p in post["pages"])


async def test_openwebui_task_prompts_get_plain_answers(
    client: httpx.AsyncClient, services
) -> None:
    task = (
        "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
        '### Output:\nJSON format: { "title": "your concise title here" }\n'
        "<chat_history>\nUSER: 秋季显白美甲\nASSISTANT: ...\n</chat_history>"
    )
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "redink", "messages": [{"role": "user", "content": task}]},
    )
    content = r.json()["choices"][0]["message"]["content"]
    assert "title" in json.loads(content)
    assert "post" not in r.json()
    async with services.db.session() as session:
        from sqlmodel import select

        from storage.tables import Post

        assert (await session.exec(select(Post))).all() == []


async def test_keepalive_comment_during_silence(app, settings) -> None:
    from dataclasses import replace

    app.state.services.settings = replace(settings, keepalive_seconds=0.01)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    ) as c:
        payload = {
            "model": "redink",
            "stream": True,
            "messages": [{"role": "user", "content": "tea 2 pages"}],
        }
        r = await c.post("/v1/chat/completions", json=payload, timeout=60)
    assert ": keep-alive" in r.text


async def test_chat_reference_image_data_url(client: httpx.AsyncClient) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "红色主题穿搭 2页"},
                {"type": "image_url", "image_url": {"url": data_url}},
            ],
        }
    ]
    r = await client.post("/v1/chat/completions", json={"model": "redink", "messages": messages})
    assert r.status_code == 200 and r.json()["post"]["status"] == "completed"


async def test_chat_rejects_bad_reference(client: httpx.AsyncClient) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"},
                },
            ],
        }
    ]
    r = await client.post("/v1/chat/completions", json={"model": "redink", "messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[0].content[1].image_url"


async def test_chat_refuses_external_reference_urls_by_default(client: httpx.AsyncClient) -> None:
    # With external fetching on they are refused as not public (tests/gateway/test_ssrf.py).
    for url in (
        "http://127.0.0.1:5432/x.png",
        "http://169.254.169.254/latest",
        "http://localhost/a.png",
    ):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "x"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]
        r = await client.post(
            "/v1/chat/completions", json={"model": "redink", "messages": messages}
        )
        assert r.status_code == 400, url
        assert "INKGATE_FETCH_EXTERNAL_IMAGES" in r.json()["error"]["message"]
