"""The Logs and Usage pages, and `GET /admin/api/usage/summary`."""

from __future__ import annotations

import html
import json
import math
import re
import time

import pytest
from sqlalchemy import insert

from admin.usage_stats import range_start
from storage.tables import UsageRow
from tests.gateway.test_posts_edit import wait_done


def log_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-id="([rj]:\d+)"', page)


def log_rows(page: str) -> dict[str, str]:
    """Row id → the row's text, tags and entities removed."""
    rows = re.findall(r'<tr data-id="([rj]:\d+)"(.*?)</tr>', page, re.S)
    return {i: html.unescape(re.sub(r"<[^>]+>", " ", body)) for i, body in rows}


def page_data(page: str, name: str) -> dict:
    found = re.search(rf'<script type="application/json" id="{name}">(.*?)</script>', page)
    assert found, name
    return json.loads(found.group(1))


def stat(page: str, name: str) -> str:
    found = re.search(rf'data-stat="{name}">([^<]*)<', page)
    assert found, name
    return found.group(1)


def assert_no_inline_code(page: str) -> None:
    assert " style=" not in page and " onclick=" not in page and " onchange=" not in page
    assert re.findall(r"<script(?![^>]*(?:src=|application/json))", page) == []


@pytest.fixture
async def alice(services) -> dict:
    row, key = await services.keys.create("alice")
    return {"id": row.id, "headers": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
async def traffic(client, services, alice) -> dict:
    """A post drawn by the local provider (alice's), an image request for an unknown
    model (the master key's, 404), and the usage rows flushed."""
    r = await client.post("/v1/posts", json={"topic": "秋天的咖啡馆"}, headers=alice["headers"])
    assert r.status_code == 200, r.text
    post = await wait_done(client, r.json()["id"])
    assert post["status"] == "completed", post
    r = await client.post("/v1/images/generations", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    await services.usage.flush()
    return {"post": post}


# -- sign-in ---------------------------------------------------------------------------


async def test_the_pages_need_a_signed_in_admin(browser, services) -> None:
    await services.admin.add_user("admin", "correct horse battery")
    r = await browser.get("/admin/logs?level=error")
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/login?next=%2Fadmin%2Flogs%3Flevel%3Derror"
    r = await browser.get("/admin/usage")
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next=")
    r = await browser.get("/admin/api/usage/summary")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"


# -- logs ------------------------------------------------------------------------------


async def test_logs_page_shows_requests_and_job_events(admin_browser, traffic) -> None:
    post_id = traffic["post"]["id"]
    r = await admin_browser.get("/admin/logs")
    assert r.status_code == 200
    page = r.text
    assert_no_inline_code(page)
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'data-nav="logs"' in page and 'data-nav="usage"' in page
    assert '<script src="/admin/static/logs.js' in page

    rows = log_rows(page)
    requests = {i: text for i, text in rows.items() if i.startswith("r:")}
    events = {i: text for i, text in rows.items() if i.startswith("j:")}
    assert requests and events
    [failed] = [text for text in requests.values() if "model_not_found" in text]
    assert "404" in failed and "master" in failed and "POST /v1/images/generations" in failed
    assert re.search(r'<tr data-id="r:\d+" data-level="warning"', page)
    created = [text for text in requests.values() if "POST /v1/posts " in text]
    assert created and "alice" in created[0] and post_id in created[0]
    assert any("outline:" in text for text in events.values())
    assert any("finished: completed" in text for text in events.values())
    assert any("cover" in text and "drawn" in text for text in events.values())
    assert all("alice" in text and "redink" in text for text in events.values())
    assert f'href="/admin/posts/{post_id}"' in page
    assert 'class="chip level-info"' in page and 'class="chip warn"' in page
    # newest first; the server's fallback time is UTC
    ids = log_ids(page)
    assert ids.index(next(i for i, t in requests.items() if "model_not_found" in t)) == 0
    assert re.search(r'<time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>', page)

    # the page's cursor is the API's: a poll from it finds nothing new
    data = page_data(page, "logs-data")
    api = (await admin_browser.get("/admin/api/logs")).json()
    assert data["latest"] == api["latest"] and data["filters"] == {}
    assert [i["id"] for i in api["data"]] == ids
    assert data["strings"]["logs.page"] == "page {n}"
    poll = await admin_browser.get("/admin/api/logs", params={"after_id": data["latest"]})
    assert poll.json()["data"] == []


async def test_logs_filters_narrow_the_rows(admin_browser, traffic, alice) -> None:
    async def ids(**params) -> list[str]:
        r = await admin_browser.get("/admin/logs", params=params)
        assert r.status_code == 200
        return log_ids(r.text)

    everything = await ids()
    warnings = await ids(level="warning")
    assert len(warnings) == 1 and warnings[0].startswith("r:")
    page = (await admin_browser.get("/admin/logs?level=error")).text
    assert log_ids(page) == [] and "Nothing matches these filters" in page
    assert '<option value="error" selected>' in page
    assert page_data(page, "logs-data")["filters"] == {"level": "error"}

    jobs = await ids(source="job")
    assert jobs and all(i.startswith("j:") for i in jobs)
    requests = await ids(source="request")
    assert requests and all(i.startswith("r:") for i in requests)
    assert sorted(jobs + requests) == sorted(everything)

    mine = await ids(key_id=alice["id"])
    assert set(jobs) <= set(mine) and warnings[0] not in mine
    assert await ids(key_id="master", level="warning") == warnings
    assert await ids(q="MODEL_NOT_FOUND") == warnings
    redink = await ids(model="redink", source="request")
    assert redink and set(redink) <= set(requests) and warnings[0] not in redink
    assert await ids(q="no such text anywhere") == []
    # odd values in the address mean "all"
    assert await ids(level="debug", source="mail") == everything

    page = (await admin_browser.get("/admin/logs", params={"key_id": alice["id"]})).text
    assert f'<option value="{alice["id"]}" selected>alice</option>' in page
    assert '<option value="redink">redink</option>' in page  # a configured model


async def test_the_page_scripts_are_served(admin_browser) -> None:
    for name in ("logs.js", "usage.js"):
        r = await admin_browser.get(f"/admin/static/{name}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert r.text.startswith('"use strict";')
    logs_js = (await admin_browser.get("/admin/static/logs.js")).text
    assert "after_id" in logs_js and "before_id" in logs_js and "visibilityState" in logs_js
    css = (await admin_browser.get("/admin/static/admin.css")).text
    assert "/* logs and usage pages */" in css and "/* end logs and usage pages */" in css


# -- usage -----------------------------------------------------------------------------

MINUTE, HOUR, DAY = 60, 3600, 86400


def usage_row(age: float, *, key=None, model="poster", status=200, latency=10.0, **extra):
    key_id, key_name = key or (None, "master")
    return {
        "created_at": time.time() - age,
        "key_id": key_id,
        "key_name": key_name,
        "model": model,
        "method": "POST",
        "endpoint": "/v1/images/generations",
        "status": status,
        "latency_ms": latency,
        "pages": None,
        "images": None,
        "post_id": None,  # every row names every column: one executemany
        "message": None,
        **extra,
    }


@pytest.fixture
async def recorded(services, alice) -> list[dict]:
    """Usage rows of known ages, statuses and latencies."""
    a = (alice["id"], "alice")
    rows = [
        usage_row(1 * MINUTE, key=a, latency=100, images=1),
        usage_row(2 * MINUTE, key=a, latency=300, images=2),
        usage_row(
            30, model="redink", endpoint="/v1/posts", latency=50, pages=6, images=6, post_id="p1"
        ),
        usage_row(10, model="nope", status=404, latency=5, message="model_not_found: no"),
        usage_row(2 * HOUR, key=a, model="redink", status=502, latency=900),
        usage_row(3 * DAY, key=a, latency=20, images=1),
        usage_row(40 * DAY, latency=10, images=1),
    ]
    async with services.db.engine.begin() as conn:
        await conn.execute(insert(UsageRow.__table__), rows)
    return rows


def expected(rows: list[dict], start: float | None = None, **match) -> dict:
    """The summary of `rows`, worked out here the slow way."""
    start = float("-inf") if start is None else start
    chosen = [
        r for r in rows if r["created_at"] >= start and all(r[k] == v for k, v in match.items())
    ]
    latencies = sorted(r["latency_ms"] for r in chosen)

    def rank(p: int):
        return latencies[max(math.ceil(p / 100 * len(latencies)) - 1, 0)] if latencies else None

    return {
        "requests": len(chosen),
        "failures": sum(r["status"] >= 500 for r in chosen),
        "client_errors": sum(400 <= r["status"] < 500 for r in chosen),
        "images": sum(r["images"] or 0 for r in chosen),
        "pages": sum(r["pages"] or 0 for r in chosen),
        "latency_ms": {"median": rank(50), "p95": rank(95), "rows": len(chosen)},
    }


def numbers(summary: dict) -> dict:
    return {k: summary[k] for k in ("requests", "failures", "client_errors", "images", "pages")} | {
        "latency_ms": summary["latency_ms"]
    }


async def test_usage_page_rows_and_summary(admin_browser, recorded, alice) -> None:
    r = await admin_browser.get("/admin/usage")  # the last 7 days by default
    assert r.status_code == 200
    page = r.text
    assert_no_inline_code(page)
    assert '<script src="/admin/static/usage.js' in page
    assert '<option value="7d" selected>' in page
    week = expected(recorded, time.time() - 7 * DAY)
    assert (week["requests"], week["failures"], week["client_errors"]) == (6, 1, 1)
    assert (week["images"], week["pages"]) == (10, 6)
    assert week["latency_ms"] == {"median": 50, "p95": 900, "rows": 6}
    assert stat(page, "requests") == "6" and stat(page, "failures") == "1"
    assert stat(page, "client_errors") == "1" and stat(page, "images") == "10"
    assert stat(page, "pages") == "6"
    assert stat(page, "latency_median") == "50 ms" and stat(page, "latency_p95") == "900 ms"
    assert re.search(r'data-stat="failures">1<', page) and 'value bad" data-stat="failures"' in page

    rows = re.findall(r'<tr data-usage-id="(\d+)">(.*?)</tr>', page, re.S)
    assert len(rows) == 6
    first = html.unescape(re.sub(r"<[^>]+>", " ", rows[0][1]))  # newest: the 404
    assert "nope" in first and "404" in first and "master key" in first
    assert 'title="model_not_found: no"' in rows[0][1] and 'class="chip warn"' in rows[0][1]
    post_row = rows[1][1]
    assert "POST /v1/posts" in post_row and 'href="/admin/posts/p1"' in post_row
    assert re.search(r'<td class="num">6</td>\s*<td class="num">6</td>', post_row)

    by_key = re.search(r'<table id="by-key">(.*?)</table>', page, re.S).group(1)
    assert re.search(
        rf'data-key-id="{alice["id"]}">\s*<td><a href="[^"]*">alice</a></td>\s*'
        r'<td class="num">4</td><td class="num">4</td><td class="num">1</td>',
        by_key,
    ), by_key
    assert re.search(
        r'data-key-id="master">.*?master key.*?<td class="num">2</td><td class="num">6</td>'
        r'<td class="num">1</td>',
        by_key,
        re.S,
    )
    by_model = re.search(r'<table id="by-model">(.*?)</table>', page, re.S).group(1)
    assert re.search(r'data-model="poster">.*?<td class="num">3</td>', by_model, re.S)
    assert f'href="/admin/usage?since=7d&amp;key_id={alice["id"]}"' in by_key

    # the filters narrow the numbers and the rows alike
    hour = (await admin_browser.get("/admin/usage?since=1h")).text
    assert stat(hour, "requests") == "4" and stat(hour, "latency_p95") == "300 ms"
    assert len(re.findall(r"<tr data-usage-id=", hour)) == 4
    failed = (await admin_browser.get("/admin/usage?since=all&status=5xx")).text
    assert stat(failed, "requests") == "1" and stat(failed, "failures") == "1"
    assert stat(failed, "latency_median") == "900 ms"
    mine = (await admin_browser.get(f"/admin/usage?since=all&key_id={alice['id']}")).text
    assert stat(mine, "requests") == "4" and "usage-reset" in mine
    every = (await admin_browser.get("/admin/usage?since=all")).text
    assert stat(every, "requests") == "7"
    nothing = (await admin_browser.get("/admin/usage?since=1h&model=other")).text
    assert stat(nothing, "requests") == "0" and stat(nothing, "latency_median") == "—"
    assert "No requests match these filters" in nothing
    # odd values fall back to the defaults
    odd = await admin_browser.get("/admin/usage?since=forever&status=7xx&page=x")
    assert odd.status_code == 200 and stat(odd.text, "requests") == "6"


async def test_usage_page_pages(admin_browser, services) -> None:
    async with services.db.engine.begin() as conn:
        await conn.execute(
            insert(UsageRow.__table__), [usage_row(i, latency=float(i)) for i in range(60)]
        )
    page = (await admin_browser.get("/admin/usage")).text
    assert len(re.findall(r"<tr data-usage-id=", page)) == 50 and "Page 1 of 2" in page
    assert 'href="/admin/usage?since=7d&amp;page=2"' in page
    page = (await admin_browser.get("/admin/usage?page=2")).text
    assert len(re.findall(r"<tr data-usage-id=", page)) == 10 and 'id="page-previous"' in page
    page = (await admin_browser.get("/admin/usage?page=99")).text
    assert "Page 2 of 2" in page


async def test_usage_page_from_real_requests(admin_browser, traffic) -> None:
    page = (await admin_browser.get("/admin/usage?since=1h")).text
    summary = (await admin_browser.get("/admin/api/usage/summary?since=1h")).json()
    assert summary["requests"] >= 3 and summary["client_errors"] == 1
    assert stat(page, "requests") == str(summary["requests"])
    assert stat(page, "images") == str(summary["images"]) and summary["images"] >= 1
    assert "alice" in page and "POST /v1/images/generations" in page
    assert f'href="/admin/posts/{traffic["post"]["id"]}"' in page


async def test_summary_api(client, recorded, alice) -> None:
    async def summary(**params) -> dict:
        r = await client.get("/admin/api/usage/summary", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    body = await summary()
    assert body["object"] == "usage.summary" and body["since"] is None
    assert numbers(body) == expected(recorded)
    assert body["by_key"] == [
        {"key_id": alice["id"], "key_name": "alice", "requests": 4, "images": 4, "errors": 1},
        {"key_id": None, "key_name": "master", "requests": 3, "images": 7, "errors": 1},
    ]
    models = {m["model"]: m for m in body["by_model"]}
    assert models["poster"] == {"model": "poster", "requests": 4, "images": 5, "errors": 0}
    assert models["redink"]["errors"] == 1 and models["nope"]["requests"] == 1

    for name in ("1h", "today", "7d", "30d"):
        got = await summary(since=name)
        assert numbers(got) == expected(recorded, range_start(name)), name
        assert got["since"].endswith("+00:00")
    assert numbers(await summary(since="all")) == expected(recorded)
    cutoff = time.time() - 5 * HOUR
    assert numbers(await summary(since=str(cutoff))) == expected(recorded, cutoff)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cutoff))
    assert numbers(await summary(since=iso))["requests"] == expected(recorded, cutoff)["requests"]

    assert numbers(await summary(key_id=alice["id"])) == expected(recorded, key_id=alice["id"])
    assert numbers(await summary(key_id="master")) == expected(recorded, key_id=None)
    assert numbers(await summary(model="redink")) == expected(recorded, model="redink")
    assert numbers(await summary(status="4xx")) == expected(recorded, status=404)
    assert (await summary(status="2xx"))["failures"] == 0
    empty = await summary(model="nothing")
    assert empty["requests"] == 0 and empty["latency_ms"]["median"] is None
    assert empty["latency_ms"] == {"median": None, "p95": None, "rows": 0}
    assert empty["by_key"] == [] and empty["by_model"] == []

    for params, param in (({"since": "yesterday"}, "since"), ({"status": "6xx"}, "status")):
        r = await client.get("/admin/api/usage/summary", params=params)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
    r = await client.get("/admin/api/usage/summary", headers=alice["headers"])
    assert r.status_code == 403


async def test_summary_api_bad_since_message(client) -> None:
    r = await client.get("/admin/api/usage/summary", params={"since": "last week"})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("'since' must be one of 1h, today, 7d")


# -- Chinese -----------------------------------------------------------------------------


async def test_pages_in_chinese(admin_browser, recorded) -> None:
    zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
    page = (await admin_browser.get("/admin/logs", headers=zh)).text
    assert '<html lang="zh">' in page
    for text in ("日志", "级别（及以上）", "来源", "自动刷新", "更早的记录", "警告", "请求"):
        assert text in page, text
    assert page_data(page, "logs-data")["strings"]["logs.page"] == "第 {n} 页"
    page = (await admin_browser.get("/admin/usage", headers=zh)).text
    for text in ("用量", "请求数", "失败（5xx）", "耗时中位数", "按密钥", "按模型", "最近 7 天"):
        assert text in page, text
    assert "主密钥" in page
