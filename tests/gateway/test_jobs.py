"""Durable post jobs: stored events, resuming after a crash or a shutdown, one taker."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from sqlmodel import select

from gateway.flow.runner import FlowRunner
from storage.tables import Page, PostEvent, PostJob
from tests.gateway.test_runner import (  # noqa: F401 - fixtures
    Script,
    drain,
    fake_types,
    image_bytes,
    post_rows,
    script,
    settings,  # the fakes' inkgate.yaml
    start,
)

LEASE = 0.6


@pytest.fixture(autouse=True)
async def short_lease(services) -> None:
    """Claims that run out in 0.6 s, renewed every 0.2 s."""
    runner = services.runner
    runner.settings = replace(runner.settings, job_lease_seconds=LEASE)
    runner.jobs.lease = LEASE
    if runner._maintainer is not None:
        runner._maintainer.cancel()
        runner._maintainer = None
    runner.start_background()


def twin(services) -> FlowRunner:
    """Another process's runner on the same database and store."""
    runner = services.runner
    return FlowRunner(runner.settings, runner.db, runner.images, runner._config, runner.slots)


async def crash(runner: FlowRunner) -> None:
    """What `kill -9` leaves: tasks gone mid-page, claims not released, no rows updated."""
    if runner._maintainer is not None:
        runner._maintainer.cancel()
    tasks = list(runner._running.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    runner._maintainer = None


async def finished(runner: FlowRunner, post_id: str, after: int = 0, timeout: float = 20) -> list:
    events = []
    async with asyncio.timeout(timeout):
        async for event in runner.follow(post_id, after):
            events.append(event)
    return events


async def job_rows(services, post_id: str) -> list[PostJob]:
    async with services.db.session() as session:
        return list((await session.exec(select(PostJob).where(PostJob.post_id == post_id))).all())


async def test_events_are_stored_in_order_and_replayed(services, script: Script) -> None:
    script.outline_pages = 3
    run = await start(services)
    await drain(run)
    events = await finished(services.runner, run.post_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds[0] == "outline" and kinds[-1] == "finished"
    assert kinds.count("page_started") == 3 and kinds.count("page_done") == 3
    assert events[0].data["pages"][0]["type"] == "cover"
    assert events[-1].data == {"status": "completed", "failed": []}
    # from the middle: only what came after
    tail = await finished(services.runner, run.post_id, after=events[3].seq)
    assert [e.seq for e in tail] == [e.seq for e in events[4:]]
    [job] = await job_rows(services, run.post_id)
    assert job.state == "done" and job.active_post_id is None


async def test_a_crashed_job_is_resumed_without_redrawing_stored_pages(
    services, script: Script
) -> None:
    script.outline_pages = 6
    script.delay = 0.4
    run = await start(services)
    # 3 at a time: once page 4 starts, the cover and pages 1-3 are stored; "kill -9"
    async with asyncio.timeout(20):
        while True:
            event = await run.events.get()
            if event.kind == "page_started" and event.page >= 4:
                break
    await crash(services.runner)
    _, pages, _ = await post_rows(services, run.post_id)
    stored = {p.page_index: p.image_id for p in pages if p.status == "done"}
    assert 0 in stored and len(stored) >= 2 and len(stored) < 6
    assert any(p.status == "generating" for p in pages)  # cut off mid-draw
    calls_before = len(script.image_calls)

    other = twin(services)
    assert await other.resume_now() == 0  # the claim has not run out yet
    await asyncio.sleep(0.7)
    assert await other.resume_now() == 1
    assert await twin(services).resume_now() == 0  # one taker only
    events = await finished(other, run.post_id)
    assert events[-1].kind == "finished" and events[-1].data["status"] == "completed"

    post, pages, _ = await post_rows(services, run.post_id)
    assert post.status == "completed" and all(p.status == "done" for p in pages)
    # stored pages kept their images and were not requested again
    for index, image_id in stored.items():
        assert pages[index].image_id == image_id
    redrawn = [c.page_index for c in script.image_calls[calls_before:]]
    assert sorted(redrawn) == sorted(set(range(6)) - set(stored))
    # the resumed pages still use the stored cover as their style reference
    cover = await image_bytes(services, stored[0])
    for call in script.image_calls[calls_before:]:
        assert call.references and call.references[0].data[:8] == cover[:8]
    [job] = await job_rows(services, run.post_id)
    assert job.state == "done" and job.runs == 2 and job.claimed_by == other.process_id
    await other.shutdown()


async def test_shutdown_releases_jobs_for_the_next_start(services, script: Script) -> None:
    script.outline_pages = 3
    script.delay = 5
    run = await start(services)
    assert (await asyncio.wait_for(run.events.get(), 10)).kind == "outline"
    while not script.image_calls:
        await asyncio.sleep(0.01)
    await services.runner.shutdown()
    post, _, _ = await post_rows(services, run.post_id)
    assert post.status == "generating"  # not failed: it will be resumed
    [job] = await job_rows(services, run.post_id)
    assert job.state == "running" and job.claimed_until == 0.0

    script.delay = 0
    restarted = twin(services)
    assert await restarted.resume_now() == 1  # at once: the claim was given back
    events = await finished(restarted, run.post_id)
    assert events[-1].data["status"] == "completed"
    await restarted.shutdown()


async def test_the_maintainer_renews_claims_of_long_jobs(services, script: Script) -> None:
    script.outline_pages = 2
    script.delay = 2.0  # longer than the 0.6 s lease
    run = await start(services)
    await asyncio.sleep(1.5)
    assert await twin(services).resume_now() == 0  # renewed: nobody may take it
    await drain(run)
    assert [c.page_index for c in script.image_calls] == [0, 1]


async def test_one_job_per_post(services, script: Script) -> None:
    script.outline_pages = 2
    script.delay = 0.3
    run = await start(services)
    assert await services.runner.submit(run.post_id) is None
    await drain(run)
    again = await services.runner.submit(run.post_id)
    assert again is not None  # nothing pending: the job ends at once, nothing drawn
    events = await finished(services.runner, run.post_id, after=again.after_seq)
    assert [e.kind for e in events] == ["outline", "finished"]
    assert len(script.image_calls) == 2


async def test_an_outline_failure_is_stored_as_a_failed_finish(services, script: Script) -> None:
    from gateway.errors import ContentPolicyViolation

    script.outline_error = ContentPolicyViolation("the topic was refused")
    run = await start(services)
    events = await finished(services.runner, run.post_id)
    assert events[-1].kind == "finished"
    error = events[-1].data["error"]
    assert error["message"] == "the topic was refused"
    assert error["code"] == "content_policy_violation" and error["status"] == 400
    async with services.db.session() as session:
        rows = (await session.exec(select(PostEvent).where(PostEvent.post_id == run.post_id))).all()
    assert json.loads(rows[-1].data)["status"] == "failed"
    [job] = await job_rows(services, run.post_id)
    assert job.state == "failed" and job.error == "the topic was refused"


async def test_references_are_stored_and_used_after_a_resume(services, script: Script) -> None:
    from providers.base import ImageData
    from tests.gateway.test_runner import png

    script.outline_pages = 3
    script.delay = 0.3
    ref = ImageData(png((1, 2, 3), (40, 40)), "image/png")
    run = await start(services, references=(ref,))
    async with asyncio.timeout(20):
        while (await run.events.get()).kind != "page_done":
            pass
    await crash(services.runner)
    await asyncio.sleep(0.7)
    other = twin(services)
    assert await other.resume_now() == 1
    await finished(other, run.post_id)
    # every page, before and after the crash, got the user's reference
    for call in script.image_calls:
        assert any(r.data == ref.data for r in call.references)
    async with services.db.session() as session:
        pages = (await session.exec(select(Page).where(Page.post_id == run.post_id))).all()
    assert all(p.status == "done" for p in pages)
    await other.shutdown()


async def test_a_reader_never_misses_an_append_made_before_it_waits(services) -> None:
    """An event appended between a reader's read and its wait must not cost the reader
    its poll interval (this once added a second to every other post)."""
    log = services.runner.events
    seq = await log.append("post_race", "page_done", 0, {})
    async with asyncio.timeout(1):  # returns at once, not after the 30 s poll
        await log.wait("post_race", seq - 1, timeout=30)
    with pytest.raises(TimeoutError):  # nothing new after `seq`: it does wait
        async with asyncio.timeout(0.2):
            await log.wait("post_race", seq, timeout=30)
