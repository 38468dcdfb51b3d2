"""Load: many concurrent tunnels through vtrio client and server processes.

Starts ``vtrio serve`` twice (a SOCKS client config and a VMess server config)
and an echo target here, pushes a checksummed payload through N concurrent
tunnels, and reports tunnels, bytes lost or corrupted, and the RSS of both
processes idle, at the peak and after the tunnels closed. ``--fd-limit``
starts the server with a low file-descriptor limit: connections beyond it
must be refused and the server must recover, never crash.

    python stress/load.py [--tunnels 1000] [--size 65536] [--fd-limit 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chains import free_port, socks_connect, wait_port

LOOPBACK = "127.0.0.1"
USER = "b831381d-6324-4d53-ad4f-8cda48b30811"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def echo(*, task_status: trio.TaskStatus[int]) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def tunnel(socks: int, target: int, size: int, number: int) -> str | None:
    """One checksummed round trip; a description of what went wrong, if any."""
    data = hashlib.shake_256(f"tunnel {number}".encode()).digest(size)
    try:
        stream = await socks_connect(socks, target)
        async with stream:

            async def send() -> None:
                await stream.send_all(data)

            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while len(received) < size:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    received += chunk
    except (OSError, EOFError, trio.BrokenResourceError) as exc:
        return f"refused: {exc}"
    if not received:
        return "refused: the tunnel closed before any byte came back"
    if bytes(received) != data:
        return f"lost or corrupted: {len(received)} of {size} bytes back"
    return None


def start(
    config: dict[str, object], workdir: Path, fd_limit: int
) -> subprocess.Popen[bytes]:
    path = workdir / f"{free_port()}.json"
    path.write_text(json.dumps(config))

    def limit() -> None:
        if fd_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    return subprocess.Popen(
        [sys.executable, "-m", "vtrio", "serve", str(path), "--log-level", "error"],
        preexec_fn=limit,
    )


async def run(args: argparse.Namespace) -> int:
    vmess, socks = free_port(), free_port()
    server_config = {
        "inbounds": [
            {
                "listen": LOOPBACK,
                "port": vmess,
                "protocol": "vmess",
                "settings": {"clients": [{"id": USER}]},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    client_config = {
        "inbounds": [{"listen": LOOPBACK, "port": socks, "protocol": "socks"}],
        "outbounds": [
            {
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": LOOPBACK,
                            "port": vmess,
                            "users": [{"id": USER, "security": "aes-128-gcm"}],
                        }
                    ]
                },
            }
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = start(server_config, Path(tmp), args.fd_limit)
        client = start(client_config, Path(tmp), 0)
        try:
            wait_port(vmess)
            wait_port(socks)
            idle = (rss_kib(client.pid), rss_kib(server.pid))
            peak = [0, 0]
            results: list[str | None] = []
            async with trio.open_nursery() as nursery:
                target = await nursery.start(echo)

                async def one(number: int) -> None:
                    results.append(await tunnel(socks, target, args.size, number))
                    peak[0] = max(peak[0], rss_kib(client.pid))
                    peak[1] = max(peak[1], rss_kib(server.pid))

                started = time.monotonic()
                after: list[tuple[int, int]] = []
                for wave in range(args.waves):
                    async with trio.open_nursery() as tunnels:
                        for number in range(args.tunnels):
                            tunnels.start_soon(one, wave * args.tunnels + number)
                    await trio.sleep(2)
                    after.append((rss_kib(client.pid), rss_kib(server.pid)))
                elapsed = time.monotonic() - started
                # Recovery: after the storm, a fresh tunnel must work.
                recovered = await tunnel(socks, target, 1000, -1) is None
                nursery.cancel_scope.cancel()
            failures = [r for r in results if r]
            lost = [r for r in failures if r.startswith("lost")]
            total = args.tunnels * args.waves
            print(
                f"tunnels: {total} in {args.waves} wave(s), {elapsed:.1f}s;"
                f" ok: {total - len(failures)}, refused: {len(failures) - len(lost)},"
                f" lost or corrupted: {len(lost)}"
            )
            waves = ", ".join(f"{c}/{s}" for c, s in after)
            print(
                f"RSS KiB client/server: idle {idle[0]}/{idle[1]},"
                f" peak {peak[0]}/{peak[1]}, after each wave {waves}"
            )
            alive = server.poll() is None and client.poll() is None
            print(f"processes alive: {alive}; a new tunnel works after: {recovered}")
            return 0 if not lost and alive and recovered else 1
        finally:
            for process in (client, server):
                process.terminate()
                process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--waves", type=int, default=2, help="repeat to spot leaks")
    parser.add_argument("--fd-limit", type=int, default=0, help="server RLIMIT_NOFILE")
    sys.exit(trio.run(run, parser.parse_args()))


if __name__ == "__main__":
    main()
