"""Runs a whole configuration: the root nursery of listeners and connections.

Theory of operation (STYLE.md section 4):

    run(config)                         root nursery
    ├── watch_signals                   SIGINT/SIGTERM -> stop listeners, grace
    ├── serve_ports x inbounds          started -> bound (host, port) pairs
    ├── DetourPorts.run x detours       dynamic-port listeners (spec section 8)
    ├── connections                     handler nursery; outlives the listeners
    │     └── handle_connection         one error boundary per connection
    └── shared                          outbound connections many tunnels use
          └── Mux / HTTP/2 sessions     (closed with the root, after the tunnels)

A shutdown closes the listeners first, then gives open tunnels ``grace``
seconds before cancelling them. SIGHUP is logged and ignored: vtrio does not
reload a running config (restart it; tunnels of a detour or Mux session would
otherwise need their users kept across the reload).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from typing import TYPE_CHECKING

import trio

from vtrio.config.model import DokodemoInboundSettings, VMessInboundSettings
from vtrio.errors import VtrioError
from vtrio.net.clock import keep_synced, unix_now
from vtrio.net.context import ServerContext
from vtrio.net.dokodemo import serve_dokodemo_udp
from vtrio.net.dynamic_port import DetourPorts, DetourWorker
from vtrio.net.inbound import VMessHandler, make_handler, serve_ports
from vtrio.net.outbound import Dispatcher
from vtrio.protocol.ciphers import backend_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vtrio.config.model import Config, Inbound

LOGGER = logging.getLogger("vtrio.server")

# Seconds open tunnels may finish after a shutdown signal.
SHUTDOWN_GRACE = 5.0

Bound = dict[str, list[tuple[str, int]]]


def inbound_key(inbound: Inbound, index: int) -> str:
    """The key of an inbound in the addresses ``run`` reports: tag or index."""
    return inbound.tag or str(index)


async def run(
    config: Config,
    *,
    grace: float = SHUTDOWN_GRACE,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config`` until cancelled or until SIGINT/SIGTERM.

    Args:
        config: the loaded configuration.
        grace: seconds open tunnels get after a shutdown signal.
        reuse_port: share the ports with other worker processes.
        task_status: receives ``{inbound tag (or index): [(host, port), ...]}``
            once every inbound listens (a dokodemo-door's UDP ports first).

    Raises:
        OSError: an inbound could not bind its port.
    """
    LOGGER.info("AEAD backend: %s", backend_name())
    context = ServerContext(config, Dispatcher(config))
    detour_targets = {
        inbound.settings.detour_to
        for inbound in config.inbounds
        if isinstance(inbound.settings, VMessInboundSettings)
        and inbound.settings.detour_to
    }
    bound: Bound = {}
    async with trio.open_nursery() as root:
        if config.ntp is not None:
            await root.start(keep_synced, config.ntp)
        connections = await root.start(_hold_connections)
        # Connections the outbounds share (Mux, gRPC, HTTP/2) are not tunnels:
        # they end with the root, so an idle one does not hold up a shutdown.
        shared = await root.start(_hold_connections)
        context.dispatcher.run_in(shared)
        async with trio.open_nursery() as listeners:
            detours: dict[str, DetourPorts] = {}
            for inbound in config.inbounds:
                if inbound.tag in detour_targets:
                    detour = DetourPorts(inbound)
                    detours[inbound.tag] = detour
                    await listeners.start(
                        _run_detour, context, inbound, detour, connections
                    )
            for index, inbound in enumerate(config.inbounds):
                if inbound.tag in detour_targets:
                    continue
                bound[inbound_key(inbound, index)] = await _start_inbound(
                    listeners, context, inbound, detours, connections, reuse_port
                )
            root.start_soon(_watch_signals, listeners.cancel_scope)
            task_status.started(bound)
        # The listeners are closed: give open tunnels their grace period.
        LOGGER.info(
            "listeners closed; %d tunnel(s) get %.0fs", _count(connections), grace
        )
        connections.cancel_scope.deadline = trio.current_time() + grace
        await _wait_empty(connections)
        root.cancel_scope.cancel()


async def _start_inbound(
    listeners: trio.Nursery,
    context: ServerContext,
    inbound: Inbound,
    detours: dict[str, DetourPorts],
    connections: trio.Nursery,
    reuse_port: bool,
) -> list[tuple[str, int]]:
    """Start an inbound's listeners (TCP, and UDP for a dokodemo-door)."""
    settings = inbound.settings
    addresses: list[tuple[str, int]] = []
    if isinstance(settings, DokodemoInboundSettings) and "udp" in settings.networks:
        addresses += [
            await listeners.start(serve_dokodemo_udp, context, inbound, settings, port)
            for port in inbound.ports
        ]
        if "tcp" not in settings.networks:
            return addresses
    addresses += await listeners.start(
        functools.partial(serve_ports, reuse_port=reuse_port),
        make_handler(context, inbound, _detour_of(inbound, detours)),
        inbound,
        inbound.ports,
        connections,
    )
    return addresses


def _detour_of(inbound: Inbound, detours: dict[str, DetourPorts]) -> DetourPorts | None:
    settings = inbound.settings
    if isinstance(settings, VMessInboundSettings) and settings.detour_to:
        return detours.get(settings.detour_to)
    return None


async def _run_detour(
    context: ServerContext,
    inbound: Inbound,
    detour: DetourPorts,
    connections: trio.Nursery,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    settings = inbound.settings
    assert isinstance(settings, VMessInboundSettings)

    async def serve_worker(
        worker: DetourWorker, *, task_status: trio.TaskStatus[None]
    ) -> None:
        handler = VMessHandler(context, inbound, settings, worker.validator)
        await serve_ports(
            handler,
            inbound,
            (worker.port,),
            connections,
            task_status=_Started(task_status),
        )

    await detour.run(serve_worker, now=unix_now, task_status=task_status)


class _Started:
    """Drops the value serve_ports reports for a detour worker."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status

    def started(self, value: object = None) -> None:
        del value
        self._status.started()


async def _hold_connections(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """Owns the connections nursery; it lives until the root is cancelled."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


def _count(nursery: trio.Nursery) -> int:
    return len(nursery.child_tasks)


async def _wait_empty(nursery: trio.Nursery) -> None:
    while nursery.child_tasks and not nursery.cancel_scope.cancelled_caught:
        if nursery.cancel_scope.deadline <= trio.current_time():
            nursery.cancel_scope.cancel()
        await trio.sleep(0.05)


async def _watch_signals(listeners: trio.CancelScope) -> None:
    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    with trio.open_signal_receiver(*watched) as signals:
        # The CLI blocks SIGTERM until here, so an early one is not lost.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        async for signum in signals:
            if signum == signal.SIGHUP:
                LOGGER.warning("SIGHUP: reloading is not supported; restart vtrio")
                continue
            LOGGER.warning("%s: shutting down", signal.Signals(signum).name)
            listeners.cancel()
            return


def serve_main(config: Config, *, workers: int = 1) -> None:
    """Run ``config`` until SIGINT or SIGTERM, in this or ``workers`` processes.

    With several workers, each is a forked process with its own Trio loop, and
    the kernel spreads connections over their listeners (SO_REUSEPORT). The
    price: every worker keeps its own auth-ID replay filter, so a replayed
    first packet is caught only when it lands on the worker that saw the
    original (with N workers, about one time in N).

    Args:
        config: the loaded configuration.
        workers: event-loop processes sharing the ports.

    Raises:
        ValueError: several workers with a port 0 or dynamic ports.
        OSError: an inbound could not bind its port.
        VtrioError: a part of the config could not be used (certificates).
    """
    if workers <= 1:
        _run_loop(config, reuse_port=False)
        return
    if any(0 in inbound.ports for inbound in config.inbounds):
        raise ValueError("--workers needs fixed ports (port 0 picks one per worker)")
    if any(
        isinstance(i.settings, VMessInboundSettings) and i.settings.detour_to
        for i in config.inbounds
    ):
        raise ValueError("--workers cannot share dynamic ports (detour) yet")
    _serve_forked(config, workers)


def _run_loop(config: Config, *, reuse_port: bool) -> None:
    """``trio.run(run, ...)``, with a start-up failure raised as itself.

    The nurseries wrap a bind or certificate error in exception groups; the
    caller wants the one error to print, not a group.

    Raises:
        OSError: a port could not be bound.
        VtrioError: a part of the config could not be used (certificates).
    """
    try:
        trio.run(functools.partial(run, config, reuse_port=reuse_port))
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(e, OSError | VtrioError) for e in leaves):
            raise leaves[0] from None
        raise


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _serve_forked(config: Config, workers: int) -> None:
    stop = {signal.SIGINT, signal.SIGTERM}
    # Children inherit the mask; each unblocks in its own signal watcher.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                _run_loop(config, reuse_port=True)
            except (OSError, VtrioError) as exc:
                LOGGER.error("worker %d: %s", os.getpid(), exc)
                code = 2
            finally:
                os._exit(code)
        pids.append(pid)
    LOGGER.info("%d workers: %s", workers, ", ".join(map(str, pids)))
    failed = 0
    while signal.sigtimedwait(stop, 0.2) is None:
        done = [pid for pid in pids if os.waitpid(pid, os.WNOHANG)[0]]
        if done:
            failed = len(done)
            pids = [pid for pid in pids if pid not in done]
            break
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    if failed:
        raise OSError(f"{failed} worker(s) exited early; see the log")
