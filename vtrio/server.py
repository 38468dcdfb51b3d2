"""Runs a whole configuration: the root nursery of listeners and connections.

Theory of operation (STYLE.md section 4):

    run(config)                         root nursery
    ├── watch_signals                   SIGINT/SIGTERM -> stop listeners, grace
    ├── serve_ports x inbounds          started -> bound (host, port) pairs
    ├── DetourPorts.run x detours       dynamic-port listeners (spec section 8)
    └── connections                     handler nursery; outlives the listeners
          └── handle_connection         one error boundary per connection

A shutdown closes the listeners first, then gives open tunnels ``grace``
seconds before cancelling them. SIGHUP is logged and ignored: vtrio does not
reload a running config (restart it; tunnels of a detour or Mux session would
otherwise need their users kept across the reload).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING

import trio

from vtrio.config.model import VMessInboundSettings
from vtrio.net.context import ServerContext
from vtrio.net.dynamic_port import DetourPorts, DetourWorker
from vtrio.net.inbound import VMessHandler, make_handler, serve_ports
from vtrio.net.outbound import Dispatcher
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
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
    task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config`` until cancelled or until SIGINT/SIGTERM.

    Args:
        config: the loaded configuration.
        grace: seconds open tunnels get after a shutdown signal.
        task_status: receives ``{inbound tag (or index): [(host, port), ...]}``
            once every inbound listens.

    Raises:
        OSError: an inbound could not bind its port.
    """
    context = ServerContext(config, Dispatcher(config))
    detour_targets = {
        inbound.settings.detour_to
        for inbound in config.inbounds
        if isinstance(inbound.settings, VMessInboundSettings)
        and inbound.settings.detour_to
    }
    bound: Bound = {}
    async with trio.open_nursery() as root:
        connections = await root.start(_hold_connections)
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
                handler = _handler(context, inbound, detours)
                bound[inbound_key(inbound, index)] = await listeners.start(
                    serve_ports, handler, inbound, inbound.ports, connections
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


def _handler(
    context: ServerContext, inbound: Inbound, detours: dict[str, DetourPorts]
) -> object:
    settings = inbound.settings
    if isinstance(settings, VMessInboundSettings):
        validator = UserValidator(settings.users, now=int(time.time()))
        detour = detours.get(settings.detour_to) if settings.detour_to else None
        return VMessHandler(context, inbound, settings, validator, detour)
    return make_handler(context, inbound)


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

    await detour.run(
        serve_worker, now=lambda: int(time.time()), task_status=task_status
    )


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
    """Run ``config`` in this process until SIGINT or SIGTERM.

    Args:
        config: the loaded configuration.
        workers: event-loop processes sharing the ports (only 1 for now).

    Raises:
        ValueError: more than one worker was asked for.
        OSError: an inbound could not bind its port.
    """
    if workers != 1:
        raise ValueError("--workers > 1 is not supported yet")
    trio.run(run, config)
