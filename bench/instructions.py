"""Instructions per tunnel of one vtrio proxy, counted by valgrind's callgrind.

On a shared machine the CPU time of a tunnel moves by 10 % between runs of
the same code, more than most changes to the connection path are worth. The
user-space instructions callgrind counts repeat to within 0.1 %, so an A/B of
such a change is one run of this script over both trees. The kernel's work is
not counted and the measured proxy runs some 50 times slower than normal, so
compare trees with each other, never with other proxies, and distrust changes
that depend on timing (the slowed proxy sees every timer fire early).

    python -m bench.instructions [--side server|client] [--tunnels 200] TREE...

Each TREE is a directory holding a ``vtrio`` package (a checkout, or
``git archive`` of a commit), put first on the path of both proxies; the side
not measured runs at full speed. Needs ``valgrind`` (``apt-get install
valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.chains import (
    Chain,
    echo_tunnels,
    free_port,
    serve_target,
    v2_client,
    v2_server,
    wait_port,
)

WARM_UP = 40
# valgrind takes seconds to start a Python process.
STARTUP = 120.0


def _totals(dumps: list[Path]) -> int:
    """Instructions in callgrind's dump files (their ``totals:`` lines)."""
    total = 0
    for dump in dumps:
        for line in dump.read_text().splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def start_chain(
    tree: Path, side: str, workdir: Path
) -> tuple[dict[str, subprocess.Popen[bytes]], int]:
    """Both vtrio proxies from ``tree``, ``side`` under callgrind; the SOCKS port."""
    environment = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    port, socks = free_port(), free_port()
    configs = {
        "server": v2_server(port),
        "client": v2_client(socks, port, "aes-128-gcm"),
    }
    processes = {}
    for name, config in configs.items():
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        command = [sys.executable, "-m", "vtrio", "serve", str(path)]
        if name == side:
            command = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={workdir / 'callgrind.out'}",
                *command,
            ]
        processes[name] = subprocess.Popen(
            command,
            env=environment,
            cwd=workdir,  # not the caller's directory: it may hold a vtrio
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    wait_port(port, STARTUP)
    wait_port(socks, STARTUP)
    return processes, socks


async def count_tunnels(socks: int, pid: int, tunnels: int) -> None:
    """Warm up, then open ``tunnels`` tunnels with callgrind counting ``pid``."""
    chain = Chain("vtrio", "vtrio", "vtrio", "aes-128-gcm", entry_port=socks)

    async def control(*options: str) -> None:
        await trio.run_process(
            ["callgrind_control", *options, str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async with trio.open_nursery() as nursery:
        target = await nursery.start(serve_target)
        # Slowed some 50 times, a tunnel may take longer than the usual give-up.
        await echo_tunnels(chain, target, 4, count=WARM_UP, give_up_after=STARTUP)
        await control("-i", "on")
        await echo_tunnels(chain, target, 4, count=tunnels, give_up_after=STARTUP)
        await control("-i", "off")
        await control("-d")
        nursery.cancel_scope.cancel()


def instructions_per_tunnel(tree: Path, side: str, tunnels: int) -> float:
    """Run a vtrio chain from ``tree`` and count one side's instructions."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        processes, socks = start_chain(tree, side, workdir)
        try:
            trio.run(count_tunnels, socks, processes[side].pid, tunnels)
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(30)
        return _totals(sorted(workdir.glob("callgrind.out*"))) / tunnels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--side", choices=("server", "client"), default="server")
    parser.add_argument("--tunnels", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (apt-get install valgrind)")
    for tree in args.trees:
        started = time.monotonic()
        count = instructions_per_tunnel(tree, args.side, args.tunnels)
        print(
            f"{tree!s:40} {args.side}: {count / 1000:7.0f} k instructions per"
            f" tunnel ({time.monotonic() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
