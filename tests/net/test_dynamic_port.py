"""Dynamic ports: the detour allocator's rotation and accounts, the client picker,
and a vtrio client switching to a detour port of a vtrio server over loopback."""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import random
import uuid

import pytest
import trio

from tests.interop.peers import free_ports
from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import open_connect, receive_exactly
from vtrio import server
from vtrio.config import model
from vtrio.config.model import (
    Allocate,
    DefaultUser,
    Inbound,
    SocksInboundSettings,
    VMessInboundSettings,
    VMessUser,
)
from vtrio.errors import ConfigError, DialError
from vtrio.net.dynamic_port import (
    DETOUR_ATTEMPT_TIMEOUT,
    MAX_VALID_MINUTES,
    DetourPorts,
    DetourWorker,
    DynamicServers,
    Endpoint,
)
from vtrio.protocol.commands import SwitchAccount

ALICE = VMessUser(uuid.UUID("11111111-2222-4333-8444-555555555555"), email="Alice@x")
BOB = VMessUser(uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa"), email="bob@x")
NOW = 1_700_000_000
LOOPBACK = "127.0.0.1"


def detour_inbound(
    ports: range | list[int],
    strategy: str = "random",
    *,
    concurrency: int = 3,
    refresh: int = 5,
    alter_id: int = 0,
) -> Inbound:
    return Inbound(
        tag="dynamic",
        protocol="vmess",
        listen=LOOPBACK,
        ports=tuple(ports),
        settings=VMessInboundSettings(default=DefaultUser(alter_id=alter_id, level=1)),
        allocate=Allocate(strategy, refresh, concurrency),  # type: ignore[arg-type]
    )


def unix_now() -> int:
    return NOW


class FakeListeners:
    """A serve_worker that records when each port listens and stops."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.refuse = refuse
        self.events: list[tuple[float, str, int]] = []

    def live(self) -> set[int]:
        ports: set[int] = set()
        for _, kind, port in self.events:
            (ports.add if kind == "listen" else ports.discard)(port)
        return ports

    async def __call__(
        self, worker: DetourWorker, *, task_status: trio.TaskStatus[None]
    ) -> None:
        await trio.lowlevel.checkpoint()
        if worker.port in self.refuse:
            raise OSError(f"port {worker.port} in use")
        self.events.append((trio.current_time(), "listen", worker.port))
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.events.append((trio.current_time(), "stop", worker.port))


async def test_random_strategy_rotates_and_keeps_two_generations(
    autojump_clock: trio.abc.Clock,
) -> None:
    ports = range(20000, 20010)
    detour = DetourPorts(detour_inbound(ports, refresh=1), rng=random.Random(4))
    listeners = FakeListeners()
    generations: list[set[int]] = []
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(detour.run, listeners, now=unix_now))
            start = trio.current_time()
            for minute in range(4):
                await trio.sleep_until(start + 60 * minute + 1)
                generations.append({worker.port for worker in detour.workers})
                # The newest generation and the one before it listen; no older.
                expected = generations[-1] | (generations[-2] if minute else set())
                assert listeners.live() == expected
            nursery.cancel_scope.cancel()
    assert all(len(generation) == 3 for generation in generations)
    assert all(generation <= set(ports) for generation in generations)
    for older, newer in itertools.pairwise(generations):
        assert not older & newer
    # Each generation stopped listening two refresh periods after it started.
    opened = {(port, t) for t, kind, port in listeners.events if kind == "listen"}
    first_stop = min(t for t, kind, _ in listeners.events if kind == "stop")
    assert first_stop - min(t for _, t in opened) == pytest.approx(120)
    assert listeners.live() == set()


async def test_expired_ports_are_reused_when_the_range_is_tight(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Two generations of two ports fill the range: every refresh must first
    # close the generation that is 2R old to find two free ports.
    detour = DetourPorts(
        detour_inbound(range(21000, 21004), concurrency=2, refresh=1),
        rng=random.Random(7),
    )
    listeners = FakeListeners()
    sizes = []
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(detour.run, listeners, now=unix_now))
            start = trio.current_time()
            for minute in range(5):
                await trio.sleep_until(start + 60 * minute + 1)
                sizes.append(len(detour.workers))
                assert len(listeners.live()) == (4 if minute else 2)
            nursery.cancel_scope.cancel()
    assert sizes == [2] * 5


async def test_switch_account_per_email_and_valid_minutes(
    autojump_clock: trio.abc.Clock,
) -> None:
    counter = itertools.count(1)
    detour = DetourPorts(
        detour_inbound(range(30000, 30004), concurrency=1, refresh=5, alter_id=4),
        random_bytes=lambda n: bytes([next(counter)] * n),
    )
    assert detour.switch_account(ALICE, now=NOW) is None
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(detour.run, FakeListeners(), now=unix_now)
            )
            (worker,) = detour.workers
            first = detour.switch_account(ALICE, now=NOW)
            assert first == SwitchAccount(
                port=worker.port,
                id=uuid.UUID(bytes=bytes([1] * 16), version=4),
                alter_id=4,
                level=1,
                valid_minutes=5,
            )
            generated = worker.validator.find_by_email("alice@x")
            assert generated is not None
            assert generated.id == first.id
            await trio.sleep(150)
            again = detour.switch_account(
                VMessUser(uuid.uuid4(), email="ALICE@X"), now=NOW
            )
            assert again is not None
            assert (again.id, again.valid_minutes) == (first.id, 3)
            other = detour.switch_account(BOB, now=NOW)
            assert other is not None
            assert len(worker.validator) == 2
            nursery.cancel_scope.cancel()


async def test_always_strategy_listens_everywhere_with_one_user_table() -> None:
    ports = [31000, 31002, 31004]
    detour = DetourPorts(detour_inbound(ports, "always"), rng=random.Random(1))
    listeners = FakeListeners()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(detour.run, listeners, now=unix_now))
            assert listeners.live() == set(ports)
            commands = [detour.switch_account(ALICE, now=NOW) for _ in range(10)]
            assert {c.port for c in commands if c} == set(ports)
            assert {(c.id, c.valid_minutes) for c in commands if c} == {
                (commands[0].id if commands[0] else None, MAX_VALID_MINUTES)
            }
            assert len({id(w.validator) for w in detour.workers}) == 1
            nursery.cancel_scope.cancel()


async def test_ports_that_cannot_listen_are_left_out() -> None:
    detour = DetourPorts(detour_inbound([1, 2, 3], "always"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = FakeListeners(refuse=frozenset({2}))
            await nursery.start(functools.partial(detour.run, listeners, now=unix_now))
            assert [worker.port for worker in detour.workers] == [1, 3]
            nursery.cancel_scope.cancel()
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="could listen")):
            await detour.run(FakeListeners(refuse=frozenset({1, 2, 3})), now=unix_now)


def test_detour_target_must_be_vmess_with_room_to_rotate() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        DetourPorts(detour_inbound(range(5000, 5003), concurrency=3))
    socks = Inbound("s", "socks", LOOPBACK, (1080,), SocksInboundSettings())
    with pytest.raises(ConfigError, match="vmess"):
        DetourPorts(socks)


# --- client picker ----------------------------------------------------------


def command(port: int, minutes: int = 2, host: str = "") -> SwitchAccount:
    return SwitchAccount(port, BOB.id, 0, 0, minutes, host)


def test_picker_round_robin_dedup_expiry_and_forget() -> None:
    origin = Endpoint("server.example", 443, ALICE)
    servers = DynamicServers(origin)
    assert [servers.pick(0).port for _ in range(2)] == [443, 443]
    servers.learn(command(5000), origin, now=0)
    servers.learn(command(5000), origin, now=30)  # same account: refreshed
    servers.learn(command(5001, host="10.0.0.1", minutes=1), origin, now=30)
    assert [(e.host, e.port) for e in servers.learned] == [
        ("server.example", 5000),
        ("10.0.0.1", 5001),
    ]
    learned = servers.learned[0]
    assert learned.user.id == BOB.id
    assert learned.user.security is ALICE.security
    assert learned.expires == 150
    assert (
        sorted(servers.pick(60).port for _ in range(6))
        == [443] * 2 + [5000] * 2 + [5001] * 2
    )
    # 5001 expired at 90, 5000 at 150.
    assert {servers.pick(100).port for _ in range(4)} == {443, 5000}
    servers.forget(learned)
    servers.forget(origin)
    assert {servers.pick(100).port for _ in range(3)} == {443}


async def test_dial_falls_back_to_the_configured_server_when_a_detour_fails() -> None:
    origin = Endpoint(LOOPBACK, 10086, ALICE)
    servers = DynamicServers(origin)
    servers.learn(command(20001), origin, now=0)
    attempts: list[int] = []

    async def dial(endpoint: Endpoint) -> str:
        await trio.lowlevel.checkpoint()
        attempts.append(endpoint.port)
        if endpoint.port == 20001:
            raise DialError("connection refused")
        return "stream"

    assert await servers.dial(dial, now=1) == (origin, "stream")
    assert await servers.dial(dial, now=1) == (origin, "stream")
    assert attempts == [10086, 20001, 10086]
    assert servers.learned == ()

    async def refuse(endpoint: Endpoint) -> str:
        await trio.lowlevel.checkpoint()
        raise OSError("refused")

    with pytest.raises(OSError, match="refused"):
        await servers.dial(refuse, now=1)


async def test_a_detour_that_never_answers_is_given_up_in_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    origin = Endpoint(LOOPBACK, 10086, ALICE)
    servers = DynamicServers(origin)
    servers.learn(command(20001), origin, now=0)
    servers.pick(0)  # the next pick is the detour

    async def dial(endpoint: Endpoint) -> str:
        if endpoint.port == 20001:
            await trio.sleep_forever()  # a port that swallows the SYN
        await trio.lowlevel.checkpoint()
        return "stream"

    started = trio.current_time()
    assert await servers.dial(dial, now=1) == (origin, "stream")
    assert trio.current_time() - started == DETOUR_ATTEMPT_TIMEOUT
    assert servers.learned == ()


async def test_picker_falls_back_after_valid_minutes(
    autojump_clock: trio.abc.Clock,
) -> None:
    origin = Endpoint(LOOPBACK, 10086, ALICE)
    servers = DynamicServers(origin)
    servers.learn(command(20001, minutes=3), origin, now=trio.current_time())
    assert {servers.pick(trio.current_time()).port for _ in range(2)} == {10086, 20001}
    await trio.sleep(3 * 60)
    assert {servers.pick(trio.current_time()).port for _ in range(2)} == {10086}


# --- vtrio client <-> vtrio server over loopback ------------------------------


def detour_server_config(
    user: VMessUser, ports: list[int], alter_id: int
) -> model.Config:
    """vmess inbound "main" with a detour to "dynamic" (random, 2 of the ports)."""
    main = Inbound(
        tag="main",
        protocol="vmess",
        listen=LOOPBACK,
        ports=(0,),
        settings=VMessInboundSettings(users=(user,), detour_to="dynamic"),
    )
    dynamic = detour_inbound(ports, concurrency=2, alter_id=alter_id)
    direct = model.Outbound("direct", "freedom", model.FreedomSettings())
    return model.Config(inbounds=(main, dynamic), outbounds=(direct,))


def socks_client_config(server_port: int, user: VMessUser) -> model.Config:
    socks = Inbound("socks-in", "socks", LOOPBACK, (0,), SocksInboundSettings())
    vmess = model.VMessOutboundSettings(
        (model.VMessServer(LOOPBACK, server_port, (user,)),)
    )
    return model.Config(
        inbounds=(socks,), outbounds=(model.Outbound("proxy", "vmess", vmess),)
    )


def access_lines(caplog: pytest.LogCaptureFixture, inbound_tag: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "vtrio.access" and f"[{inbound_tag} ->" in record.getMessage()
    ]


@pytest.mark.parametrize("alter_id", [0, 4])
async def test_vtrio_client_switches_to_a_detour_port(
    alter_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.access")
    user = VMessUser(ALICE.id, alter_id=alter_id, email="alice@x")
    ports = free_ports(4)
    connections = 6
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(
                server.run, detour_server_config(user, ports, alter_id)
            )
            main_port = bound["main"][0][1]
            bound = await nursery.start(
                server.run, socks_client_config(main_port, VMessUser(user.id, alter_id))
            )
            socks_port = bound["socks-in"][0][1]
            for index in range(connections):
                data = hashlib.sha256(b"%d" % index).digest() * 1000
                stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo)
                async with stream:
                    await stream.send_all(data)
                    assert await receive_exactly(stream, len(data)) == data
            nursery.cancel_scope.cancel()
    # The first connection went to the main port and brought a SwitchAccount;
    # the client then alternated between the main port and the detour account.
    on_main = access_lines(caplog, "main")
    on_detour = access_lines(caplog, "dynamic")
    assert len(on_main) + len(on_detour) == connections
    assert len(on_detour) >= connections // 3
    assert all("email: alice@x" in line for line in on_main + on_detour)
