from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.config import ConfigError, ConfigFile, build_config
from gateway.upstream_slots import UpstreamSlots


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
