"""The chain between separate processes started through the CLI.

``vtrio serve server.json`` and ``vtrio client LINK`` run as child processes;
a checksummed payload crosses SOCKS5 -> client -> server -> echo, then SIGTERM
stops both with exit code 0 (listeners first, then a grace period).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import trio

from tests.support.echo import closed_port, serve_tcp_echo
from tests.support.ntp import serve_ntp
from tests.support.socks5 import open_connect, send_and_read_to_end
from vtrio.config import loads
from vtrio.config.links import config_links

if TYPE_CHECKING:
    import pathlib

LOOPBACK = "127.0.0.1"
USER = "b831381d-6324-4d53-ad4f-8cda48b30811"


async def wait_for_port(port: int) -> None:
    while True:
        try:
            stream = await trio.open_tcp_stream(LOOPBACK, port)
        except OSError:
            await trio.sleep(0.05)
            continue
        await stream.aclose()
        return


def vmess_server_json(port: int, **inbound: object) -> dict[str, object]:
    return {
        "inbounds": [
            {
                "tag": "vmess-in",
                "listen": LOOPBACK,
                "port": port,
                "protocol": "vmess",
                "settings": {
                    "clients": [
                        {"id": USER, "email": "cli@test"},
                        {"id": "old-client", "alterId": 4},
                    ]
                },
            }
            | inbound
        ],
        "outbounds": [{"protocol": "freedom"}],
    }


async def run_processes(
    server_json: dict[str, object],
    client_arguments: list[str],
    socks_port: int,
    directory: pathlib.Path,
) -> tuple[bytes, bytes]:
    """``vtrio serve`` and ``vtrio client``: a checksummed payload through
    both, then SIGTERM; returns the client's banner and the server's log."""
    server_port = server_json["inbounds"][0]["port"]  # type: ignore[index]
    config_file = directory / "server.json"
    config_file.write_text(json.dumps(server_json))
    data = hashlib.shake_256(b"cli").digest(1_500_000)
    python = sys.executable
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            server = await trio.lowlevel.open_process(
                [python, "-m", "vtrio", "serve", str(config_file)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            client = await trio.lowlevel.open_process(
                [
                    python,
                    "-m",
                    "vtrio",
                    "client",
                    *client_arguments,
                    "--listen",
                    f"{LOOPBACK}:{socks_port}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                await wait_for_port(server_port)
                await wait_for_port(socks_port)
                stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)
                async with stream:
                    await stream.send_all(data)
                    await stream.send_eof()
                    received = bytearray()
                    while chunk := await stream.receive_some(65536):
                        received += chunk
                assert (
                    hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
                )
            finally:
                for process in (client, server):
                    process.send_signal(signal.SIGTERM)
                codes = [await client.wait(), await server.wait()]
            assert client.stdout is not None
            banner = bytearray()  # all it printed: it has exited
            while output := await client.stdout.receive_some(4096):
                banner += output
            assert server.stdout is not None
            log = await server.stdout.receive_some(4096)
            assert codes == [0, 0]
            nursery.cancel_scope.cancel()
    return bytes(banner), bytes(log)


async def test_serve_and_client_processes_carry_a_payload_and_stop_cleanly(
    tmp_path: pathlib.Path,
) -> None:
    server_port, socks_port = await closed_port(), await closed_port()
    server_json = vmess_server_json(server_port)
    link, _legacy = config_links(loads(json.dumps(server_json)))
    banner, log = await run_processes(server_json, [link], socks_port, tmp_path)
    assert f"SOCKS5 on {LOOPBACK}:{socks_port}" in banner.decode()
    assert b"vmess-in: 1 user(s) with alterId > 0" in log


async def test_a_client_from_flags_speaks_the_http_tcp_header(
    tmp_path: pathlib.Path,
) -> None:
    server_port, socks_port = await closed_port(), await closed_port()
    header = {"type": "http", "request": {"path": ["/a", "/b"]}}
    server_json = vmess_server_json(
        server_port,
        streamSettings={"network": "tcp", "tcpSettings": {"header": header}},
    )
    flags = ["--server", f"{LOOPBACK}:{server_port}", "--id", USER]
    flags += ["--header-type", "http", "--path", "/b", "--host", "cdn.example"]
    banner, _ = await run_processes(server_json, flags, socks_port, tmp_path)
    assert "(auto, tcp+http(/b))" in banner.decode()


async def test_a_client_from_flags_speaks_grpc(tmp_path: pathlib.Path) -> None:
    server_port, socks_port = await closed_port(), await closed_port()
    server_json = vmess_server_json(
        server_port,
        streamSettings={"network": "grpc", "grpcSettings": {"serviceName": "svc"}},
    )
    flags = ["--server", f"{LOOPBACK}:{server_port}", "--id", USER]
    flags += ["--network", "grpc", "--path", "svc"]
    banner, _ = await run_processes(server_json, flags, socks_port, tmp_path)
    assert "(auto, grpc(/svc/Tun))" in banner.decode()
    # Its gRPC connection outlives the tunnel, but is no tunnel: the shutdown
    # does not wait for it.
    assert "listeners closed; 0 tunnel(s)" in banner.decode()


async def test_demo_serve_prints_a_working_link() -> None:
    """`vtrio serve` with no config: a link and a client command, then it serves."""
    python = sys.executable
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [python, "-m", "vtrio", "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert process.stdout is not None
            output = b""
            while b"client:" not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, output
                output += chunk
        finally:
            process.send_signal(signal.SIGTERM)
            code = await process.wait()
    text = output.decode()
    assert "share link: vmess://" in text
    assert "vtrio client 'vmess://" in text
    assert code == 0


async def test_workers_share_the_ports_and_stop_together(
    tmp_path: pathlib.Path,
) -> None:
    """`--workers 2`: two processes listen on one port; SIGTERM stops all."""
    socks_port = await closed_port()
    config_file = tmp_path / "socks.json"
    config_file.write_text(
        json.dumps(
            {
                "inbounds": [
                    {
                        "tag": "socks",
                        "listen": LOOPBACK,
                        "port": socks_port,
                        "protocol": "socks",
                    }
                ],
                "outbounds": [{"protocol": "freedom"}],
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "vtrio",
        "serve",
        str(config_file),
        "--workers",
        "2",
    ]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                owners = await two_workers_tunnel(socks_port, echo_port)
                assert process.pid not in owners
            finally:
                process.send_signal(signal.SIGTERM)
                code = await process.wait()
            assert code == 0
            nursery.cancel_scope.cancel()


async def two_workers_tunnel(socks_port: int, echo_port: int) -> set[int]:
    """Wait for two processes to listen on the SOCKS port, send 20 echoes
    through it; the listening processes."""
    await wait_for_port(socks_port)
    # The workers bind one after the other: give the second a moment.
    for _ in range(100):
        owners = listening_pids(socks_port)
        if len(owners) == 2:
            break
        await trio.sleep(0.05)
    assert len(owners) == 2
    for number in range(20):
        stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)
        async with stream:
            message = f"message {number}".encode()
            await stream.send_all(message)
            assert await stream.receive_some(100) == message
    return owners


async def test_a_client_with_workers_shares_its_socks_port(
    tmp_path: pathlib.Path,
) -> None:
    """`vtrio client --workers 2`: two processes on the SOCKS port, both
    tunnelling."""
    server_port, socks_port = await closed_port(), await closed_port()
    config_file = tmp_path / "server.json"
    config_file.write_text(json.dumps(vmess_server_json(server_port)))
    python = sys.executable
    client_command = [python, "-m", "vtrio", "client", "--server"]
    client_command += [f"{LOOPBACK}:{server_port}", "--id", USER, "--workers", "2"]
    client_command += ["--listen", f"{LOOPBACK}:{socks_port}"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            processes = [
                await trio.lowlevel.open_process(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                for command in (
                    [python, "-m", "vtrio", "serve", str(config_file)],
                    client_command,
                )
            ]
            try:
                await wait_for_port(server_port)
                await two_workers_tunnel(socks_port, echo_port)
            finally:
                for process in processes:
                    process.send_signal(signal.SIGTERM)
                codes = [await process.wait() for process in processes]
            assert codes == [0, 0]
            nursery.cancel_scope.cancel()


def listening_pids(port: int) -> set[int]:
    """Processes with a listening socket on ``port`` (from /proc, Linux)."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(fields[9])
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = {
                os.readlink(f"/proc/{pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{pid}/fd")
            }
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            owners.add(int(pid))
    return owners


async def test_start_up_failures_are_one_line_and_exit_2(
    tmp_path: pathlib.Path,
) -> None:
    """A busy port or a missing certificate: a message, exit 2, no traceback."""
    busy = trio.socket.socket()
    await busy.bind((LOOPBACK, 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = {
        "busy.json": (
            {"port": port, "listen": LOOPBACK, "protocol": "socks"},
            "cannot listen: Address already in use",
        ),
        "cert.json": (
            {
                "port": 0,
                "listen": LOOPBACK,
                "protocol": "vmess",
                "settings": {"clients": [{"id": USER}]},
                "streamSettings": {
                    "security": "tls",
                    "tlsSettings": {
                        "certificates": [
                            {
                                "certificateFile": str(tmp_path / "missing.crt"),
                                "keyFile": str(tmp_path / "missing.key"),
                            }
                        ]
                    },
                },
            },
            "cannot load certificate and key",
        ),
    }
    with busy, trio.fail_after(30):
        for name, (inbound, expected) in cases.items():
            config_file = tmp_path / name
            config_file.write_text(
                json.dumps(
                    {"inbounds": [inbound], "outbounds": [{"protocol": "freedom"}]}
                )
            )
            result = await trio.run_process(
                [sys.executable, "-m", "vtrio", "serve", str(config_file)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 2
            assert expected in result.stderr.decode()
            assert b"Traceback" not in result.stderr


async def test_an_ntp_corrected_server_needs_a_corrected_client(
    tmp_path: pathlib.Path,
) -> None:
    """The server's NTP says its clock is 300 s slow: a client on the system
    clock is refused (too far apart), one corrected by the same NTP works."""
    server_port, socks_port = await closed_port(), await closed_port()
    async with trio.open_nursery() as nursery:
        ntp_port = await nursery.start(serve_ntp, 300.0)
        server_json = {
            "ntp": {"server": LOOPBACK, "port": ntp_port},
            "log": {"loglevel": "info"},
            "inbounds": [
                {
                    "tag": "vmess-in",
                    "listen": LOOPBACK,
                    "port": server_port,
                    "protocol": "vmess",
                    "settings": {"clients": [{"id": USER}]},
                }
            ],
            "outbounds": [{"protocol": "freedom"}],
        }
        config_file = tmp_path / "server.json"
        config_file.write_text(json.dumps(server_json))
        (link,) = config_links(loads(json.dumps(server_json)))
        python = sys.executable
        echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
        with trio.fail_after(40):
            server = await trio.lowlevel.open_process(
                [python, "-m", "vtrio", "serve", str(config_file)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            clients = []
            try:
                await wait_for_port(server_port)
                for ntp in (None, f"{LOOPBACK}:{ntp_port}"):
                    command = [python, "-m", "vtrio", "client", link]
                    command += ["--listen", f"{LOOPBACK}:{socks_port}"]
                    command += ["--ntp", ntp] if ntp else []
                    clients.append(
                        await trio.lowlevel.open_process(
                            command, stdout=subprocess.DEVNULL
                        )
                    )
                    await wait_for_port(socks_port)
                    stream = await open_connect(
                        LOOPBACK, socks_port, LOOPBACK, echo_port
                    )
                    async with stream:
                        echoed = await send_and_read_to_end(stream, b"ping")
                    assert echoed == (b"ping" if ntp else b"")
                    clients[-1].send_signal(signal.SIGTERM)
                    await clients[-1].wait()
            finally:
                for process in (*clients, server):
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)
                await server.wait()
            assert server.stdout is not None
            log = await server.stdout.receive_some(16384)
            assert b"the clock is +300." in log
            assert b"auth ID timestamp -300 s off" in log
        nursery.cancel_scope.cancel()
