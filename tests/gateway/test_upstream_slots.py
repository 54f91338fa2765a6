from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.config import ConfigError, ConfigFile, build_config
from gateway.upstream_slots import UpstreamSlots
from storage.db import Database


async def test_slots_cap_calls_per_provider() -> None:
    slots = UpstreamSlots()
    in_flight = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    async def call(name: str, limit: int | None) -> None:
        async with slots.slot(name, limit):
            in_flight[name] += 1
            peak[name] = max(peak[name], in_flight[name])
            await asyncio.sleep(0.01)
            in_flight[name] -= 1

    await asyncio.gather(*[call("a", 2) for _ in range(8)], *[call("b", None) for _ in range(8)])
    assert peak == {"a": 2, "b": 8}


@pytest.mark.parametrize("value", [0, -1, "4", 2.5, True])
def test_max_concurrency_must_be_a_positive_integer(value) -> None:
    file = ConfigFile(providers={"p": {"type": "local", "max_concurrency": value}})
    with pytest.raises(ConfigError, match="max_concurrency"):
        build_config(file, httpx.AsyncClient())


def test_max_concurrency_is_kept_per_provider() -> None:
    file = ConfigFile(providers={"p": {"type": "local", "max_concurrency": 4}})
    assert build_config(file, httpx.AsyncClient()).provider_limits == {"p": 4}


@pytest.fixture
async def two_processes(database_url: str):
    """Two gateways' worth of slots on one database: separate engines, separate holders."""
    first, second = Database(database_url), Database(database_url)
    await first.migrate()
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


async def test_the_cap_holds_across_processes_sharing_the_database(two_processes) -> None:
    slots = [UpstreamSlots(db) for db in two_processes]
    in_flight = peak = 0

    async def call(s: UpstreamSlots) -> None:
        nonlocal in_flight, peak
        async with s.slot("acct", 3):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1

    # each process alone would allow 3; together they still hold 3
    await asyncio.gather(*[call(s) for s in slots for _ in range(6)])
    assert peak == 3


async def test_a_crashed_holders_slot_frees_itself_after_the_lease(two_processes) -> None:
    now = [1000.0]
    crashed = UpstreamSlots(two_processes[0], clock=lambda: now[0])
    alive = UpstreamSlots(two_processes[1], clock=lambda: now[0])
    await crashed._seed("acct", 1)
    assert await crashed._try_take("acct", 0)  # and never released: the process died

    async def use() -> str:
        async with alive.slot("acct", 1):
            return "ran"

    waiting = asyncio.create_task(use())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    now[0] += 91  # past LEASE_SECONDS
    assert await asyncio.wait_for(waiting, 5) == "ran"


async def test_a_released_slot_is_free_for_another_process(two_processes) -> None:
    first, second = (UpstreamSlots(db) for db in two_processes)
    async with first.slot("acct", 1):
        pass
    async with asyncio.timeout(2):
        async with second.slot("acct", 1):
            pass
    await first.release_all()
