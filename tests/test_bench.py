"""The benchmark's connection test on a real vtrio chain: counts and windows."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import pytest
import trio

from bench.chains import (
    DEFERRED_TEARDOWN,
    Chain,
    connections,
    echo_tunnels,
    serve_target,
    sing_box_path,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

pytestmark = pytest.mark.slow


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    chain = Chain("vtrio", "vtrio", "vtrio", "aes-128-gcm")
    chain.start(tmp_path, pin=False)
    try:
        yield chain
    finally:
        chain.stop()


async def test_a_counted_run_opens_exactly_that_many_tunnels(chain: Chain) -> None:
    async with trio.open_nursery() as nursery:
        target = await nursery.start(serve_target)
        finished, lost = await echo_tunnels(chain, target, 3, count=9)
        nursery.cancel_scope.cancel()
    assert len(finished) == 9
    assert lost == []
    ends = [end for end, _ in finished]
    assert ends == sorted(ends)  # finish times, from the start of the run
    assert all(0 < latency <= end for end, latency in finished)


async def test_the_rate_counts_only_the_window_after_the_warm_up(chain: Chain) -> None:
    window = 0.5
    async with trio.open_nursery() as nursery:
        target = await nursery.start(serve_target)
        started = trio.current_time()
        rate, p50, p99, lost = await connections(chain, target, 2, window)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    # It waits out the warm-up and then the window (how much longer a loaded
    # machine takes says nothing about the benchmark).
    assert elapsed >= DEFERRED_TEARDOWN + window
    assert rate > 0
    assert 0 < p50 <= p99
    assert lost == 0


async def echoes_through(make_chain: Callable[[int], Chain], tmp_path: Path) -> int:
    """Echo tunnels through the chain ``make_chain`` builds for the target's
    port: how many of 4 came back."""
    async with trio.open_nursery() as nursery:
        target = await nursery.start(serve_target)
        chain = make_chain(target)
        chain.start(tmp_path, pin=False)
        try:
            finished, _ = await echo_tunnels(chain, target, 2, count=4)
        finally:
            chain.stop()
        nursery.cancel_scope.cancel()
    return len(finished)


async def test_a_dokodemo_entry_reaches_its_fixed_target(tmp_path: Path) -> None:
    def dokodemo_chain(target: int) -> Chain:
        return Chain("vtrio", "vtrio", "vtrio", "aes-128-gcm", fixed_target=target)

    assert await echoes_through(dokodemo_chain, tmp_path) == 4


@pytest.mark.parametrize("client", ["vtrio", "sing-box"])
async def test_a_grpc_chain_carries_tunnels_over_grpc(
    tmp_path: Path, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    if client == "sing-box" and sing_box_path() is None:
        pytest.skip("sing-box is not installed")
    chain = Chain(client, client, "vtrio", "aes-128-gcm", network="grpc")
    assert await echoes_through(lambda _target: chain, tmp_path) == 4
    # The server is vtrio: its config names the transport it serves.
    assert served_streams(tmp_path) == [
        {"network": "grpc", "grpcSettings": {"serviceName": "bench"}}
    ]


def served_streams(directory: Path) -> list[object]:
    """The streamSettings of the VMess inbounds in the vtrio configs there."""
    inbounds = [
        json.loads(path.read_text())["inbounds"][0]
        for path in directory.glob("vtrio-*.json")
    ]
    return [i.get("streamSettings") for i in inbounds if i["protocol"] == "vmess"]


async def test_a_tunnel_left_hanging_is_lost_and_its_worker_goes_on() -> None:
    # An entry that accepts and never answers, as a server that drains a
    # request it rejected: each tunnel is given up after the timeout.
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), _hold_forever, 0
        )
        chain = Chain("silent", "vtrio", "vtrio", "aes-128-gcm", fixed_target=1)
        chain.entry_port = listeners[0].socket.getsockname()[1]
        started = trio.current_time()
        finished, lost = await echo_tunnels(chain, 1, 1, count=3, give_up_after=0.2)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert finished == []
    assert [reason for _, reason in lost] == ["no echo within 0.2 s"] * 3
    assert 0.6 <= elapsed < 2.0


async def _hold_forever(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


def test_the_routing_benchmark_runs_on_small_lists(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import routing as routing_bench

    monkeypatch.setattr(routing_bench, "SIZES", (200,))
    monkeypatch.setattr(routing_bench, "LOOKUPS", 5)
    routing_bench.main()
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:2] == ["entries", "load"]
    assert [row.split()[0] for row in rows[1:]] == ["200"] * 3
