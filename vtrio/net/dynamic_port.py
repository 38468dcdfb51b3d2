"""Dynamic ports (detour): the server's port allocator and the client's picker.

Theory of operation, server side (spec 8.1): a VMess inbound with
``detour_to = TAG`` answers every accepted client with a SwitchAccount command
(spec 5.5) naming a port of inbound TAG and an account on it. :class:`DetourPorts`
runs that TAG inbound. Its listeners are grouped in *generations* of workers,
one worker per port, each with its own user table, as v2ray creates brand-new
inbound instances on every refresh:

* strategy ``always``: one generation with every port of the range, sharing one
  user table, living forever; commands say "valid for 255 minutes";
* strategy ``random``: every ``refresh`` minutes a new generation of
  ``concurrency`` ports not in use by a live generation; each generation stops
  listening ``2 * refresh`` minutes after it started (its tunnels live in the
  runtime's connection nursery and end on their own), and commands say
  ``refresh - whole minutes since the last refresh``.

:meth:`DetourPorts.switch_account` picks a random worker of the newest
generation and the account of the requesting user's e-mail on it, creating one
(random UUID, the inbound's ``default`` alterId and level) the first time, like
v2ray's ``userByEmail``. The listeners themselves are the runtime's: it passes a
``serve_worker`` function that serves VMess on one port with one user table.

Client side (spec 8.2): :class:`DynamicServers` keeps the configured server
plus every account a SwitchAccount handed out, valid for ``ValidMin`` minutes,
and :meth:`DynamicServers.pick` goes round-robin over the entries still valid.
Unlike v2ray, entries are de-duplicated by (host, port, uuid), so the list does
not grow with traffic; an entry that fails to dial is dropped, so the client
falls back to the configured server. It is pure: time comes in as ``now``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from vtrio.config.model import Inbound, VMessInboundSettings, VMessUser
from vtrio.errors import ConfigError, DialError
from vtrio.protocol.commands import SwitchAccount
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

LOGGER = logging.getLogger("vtrio.net.dynamic_port")

DialT = TypeVar("DialT")

# v2ray reports 9999 minutes for an always-on detour; the wire field is a byte.
MAX_VALID_MINUTES = 255
# A learned detour port that does not connect in this time is given up for the
# configured server, within the outbound's 16 s connect deadline.
DETOUR_ATTEMPT_TIMEOUT = 4.0


class UserTable:
    """The users of one detour inbound instance (v2ray: one proxy object)."""

    def __init__(self, validator: UserValidator) -> None:
        self.validator = validator
        # Accounts by lowercased e-mail; configured users with an e-mail count.
        self.by_email = {
            user.email.lower(): user for user in validator.users if user.email
        }


@dataclass(frozen=True, slots=True)
class DetourWorker:
    """One listening port of the detour inbound and the users it accepts.

    The workers of an ``always`` inbound share one table; ``random`` gives each
    worker its own.
    """

    port: int
    users: UserTable

    @property
    def validator(self) -> UserValidator:
        return self.users.validator


class ServeWorker(Protocol):
    """The runtime's VMess listener for one detour port.

    It binds ``worker.port``, calls ``task_status.started()`` once listening
    (raising ``OSError`` if it cannot bind), authenticates clients against
    ``worker.validator`` and serves until cancelled; cancelling it closes the
    listener only, never the tunnels already accepted.
    """

    async def __call__(
        self, worker: DetourWorker, *, task_status: trio.TaskStatus[None]
    ) -> None: ...


class DetourPorts:
    """The detour target inbound: port allocation, rotation and accounts."""

    def __init__(
        self,
        inbound: Inbound,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        rng: random.Random | None = None,
    ) -> None:
        """Args:
        inbound: the inbound named by the main inbound's ``detour_to``.
        random_bytes: the source of generated UUIDs.
        rng: picks ports and workers (seeded in tests).

        Raises:
            ConfigError: the inbound is not VMess, or the random strategy has
                no room for a second generation beside the first.
        """
        settings = inbound.settings
        if not isinstance(settings, VMessInboundSettings):
            raise ConfigError(
                f"detour target {inbound.tag!r} must be a vmess inbound",
                path="$.inbounds",
            )
        allocate = inbound.allocate
        if allocate.strategy == "random" and not (
            0 < allocate.concurrency < len(set(inbound.ports))
        ):
            raise ConfigError(
                f"inbound {inbound.tag!r}: allocate.concurrency must be at least 1"
                " and less than its number of ports",
                path="$.inbounds",
            )
        self._inbound = inbound
        self._settings = settings
        self._random_bytes = random_bytes
        self._rng = rng if rng is not None else random.SystemRandom()
        self._generation: list[DetourWorker] = []
        self._refreshed = -math.inf
        self._ports_in_use: set[int] = set()
        self._live: list[_Generation] = []

    @property
    def workers(self) -> tuple[DetourWorker, ...]:
        """The newest generation: where SwitchAccount commands point."""
        return tuple(self._generation)

    def switch_account(self, user: VMessUser, *, now: int) -> SwitchAccount | None:
        """The command for a client the main inbound just accepted (spec 8.1).

        Args:
            user: the authenticated user of the main inbound.
            now: Unix seconds, for the new account's legacy table.

        Returns:
            The command, or None before the first generation listens.
        """
        if not self._generation:
            return None
        worker = self._rng.choice(self._generation)
        email = user.email.lower()
        account = worker.users.by_email.get(email)
        if account is None:
            default = self._settings.default
            account = VMessUser(
                id=uuid.UUID(bytes=self._random_bytes(16), version=4),
                alter_id=default.alter_id,
                level=default.level,
                email=email,
            )
            worker.users.by_email[email] = account
            worker.validator.add(account, now=now)
        return SwitchAccount(
            port=worker.port,
            id=account.id,
            alter_id=account.alter_id,
            level=account.level,
            valid_minutes=self._valid_minutes(),
        )

    def _valid_minutes(self) -> int:
        if self._inbound.allocate.strategy == "always":
            return MAX_VALID_MINUTES
        elapsed = int((trio.current_time() - self._refreshed) // 60)
        minutes = self._inbound.allocate.refresh_minutes - elapsed
        return max(1, min(MAX_VALID_MINUTES, minutes))

    async def run(
        self,
        serve_worker: ServeWorker,
        *,
        now: Callable[[], int],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on the detour ports and rotate them until cancelled.

        Args:
            serve_worker: serves VMess on one worker's port.
            now: Unix seconds, for the fresh user tables.
            task_status: started once the first generation listens.

        Raises:
            ExceptionGroup: with an OSError when no port of the first
                generation could be bound.
        """
        allocate = self._inbound.allocate
        async with trio.open_nursery() as nursery:
            if allocate.strategy == "always":
                shared = self._new_user_table(now())
                workers = [DetourWorker(port, shared) for port in self._inbound.ports]
                await self._start_generation(nursery, serve_worker, workers, math.inf)
                task_status.started()
                return  # the nursery keeps the listeners running
            refresh = allocate.refresh_minutes * 60.0
            started = False
            while True:
                # Close generations 2R old first, so their ports are free
                # again (and unbound) before the new ones are picked.
                await self._retire_expired()
                free = sorted(set(self._inbound.ports) - self._ports_in_use)
                ports = self._rng.sample(free, min(allocate.concurrency, len(free)))
                workers = [
                    DetourWorker(port, self._new_user_table(now())) for port in ports
                ]
                try:
                    await self._start_generation(
                        nursery, serve_worker, workers, 2 * refresh
                    )
                except OSError:
                    if not started:
                        raise
                    LOGGER.warning("detour %s: refresh failed", self._inbound.tag)
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(refresh)

    async def _retire_expired(self) -> None:
        for generation in list(self._live):
            if generation.scope.deadline <= trio.current_time():
                generation.scope.cancel()
                await generation.closed.wait()

    def _new_user_table(self, now: int) -> UserTable:
        return UserTable(UserValidator(self._settings.users, now=now))

    async def _start_generation(
        self,
        nursery: trio.Nursery,
        serve_worker: ServeWorker,
        workers: list[DetourWorker],
        lifetime: float,
    ) -> None:
        """Start the listeners of ``workers``; make them the newest generation.

        Workers whose port cannot be bound are left out.

        Raises:
            OSError: none of them could be bound.
        """
        generation = _Generation({worker.port for worker in workers}, lifetime)
        listening: list[DetourWorker] = await nursery.start(
            self._serve_generation, serve_worker, workers, generation
        )
        self._generation = listening
        self._refreshed = trio.current_time()
        LOGGER.info(
            "detour %s: listening on ports %s",
            self._inbound.tag,
            ", ".join(str(worker.port) for worker in listening),
        )

    async def _serve_generation(
        self,
        serve_worker: ServeWorker,
        workers: list[DetourWorker],
        generation: _Generation,
        *,
        task_status: trio.TaskStatus[list[DetourWorker]],
    ) -> None:
        ports = generation.ports
        self._ports_in_use |= ports
        self._live.append(generation)
        listening: list[DetourWorker] = []
        try:
            with generation.scope:
                async with trio.open_nursery() as nursery:
                    for worker in workers:
                        try:
                            await nursery.start(serve_worker, worker)
                        except OSError as exc:
                            LOGGER.warning("detour port %d: %s", worker.port, exc)
                        else:
                            listening.append(worker)
                    if listening:
                        task_status.started(listening)
            if not listening:
                # Raised outside the nursery so that start() sees a bare OSError.
                raise OSError(f"no detour port of {sorted(ports)} could listen")
        finally:
            self._ports_in_use -= ports
            self._live.remove(generation)
            generation.closed.set()


class _Generation:
    """The listeners started together, and when they stop listening."""

    def __init__(self, ports: set[int], lifetime: float) -> None:
        self.ports = ports
        self.scope = trio.CancelScope(deadline=trio.current_time() + lifetime)
        self.closed = trio.Event()


# --- client side --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server and the account to use on it; ``expires`` None never expires."""

    host: str
    port: int
    user: VMessUser
    expires: float | None = None

    def key(self) -> tuple[str, int, uuid.UUID]:
        return self.host, self.port, self.user.id


class DynamicServers:
    """The configured server plus the accounts SwitchAccount commands gave.

    ``now`` is in seconds on any monotonic clock the caller keeps using.
    """

    def __init__(self, origin: Endpoint) -> None:
        self.origin = origin
        self._learned: dict[tuple[str, int, uuid.UUID], Endpoint] = {}
        self._turn = 0

    def pick(self, now: float) -> Endpoint:
        """The next endpoint, round-robin over the ones still valid."""
        for key, endpoint in list(self._learned.items()):
            if endpoint.expires is not None and endpoint.expires <= now:
                del self._learned[key]
        candidates = [self.origin, *self._learned.values()]
        endpoint = candidates[self._turn % len(candidates)]
        self._turn += 1
        return endpoint

    def learn(self, command: SwitchAccount, dialled: Endpoint, now: float) -> None:
        """Remember the account a server offered after we dialled ``dialled``.

        An empty host means the host we dialled. The account keeps our
        security and experiments; the header mode follows its alterId.
        """
        user = replace(
            dialled.user,
            id=command.id,
            alter_id=command.alter_id,
            level=command.level,
        )
        endpoint = Endpoint(
            command.host or dialled.host,
            command.port,
            user,
            now + 60.0 * command.valid_minutes,
        )
        self._learned[endpoint.key()] = endpoint

    def forget(self, endpoint: Endpoint) -> None:
        """Drop an endpoint that failed; the configured one always stays."""
        self._learned.pop(endpoint.key(), None)

    @property
    def learned(self) -> tuple[Endpoint, ...]:
        """The dynamic entries currently remembered (for logs and tests)."""
        return tuple(self._learned.values())

    async def dial(
        self, dial: Callable[[Endpoint], Awaitable[DialT]], *, now: float
    ) -> tuple[Endpoint, DialT]:
        """Dial the next endpoint; if a learned one fails, or does not connect
        within ``DETOUR_ATTEMPT_TIMEOUT``, forget it and dial the configured
        server instead.

        Args:
            dial: opens a connection to one endpoint (the outbound's dialer).
            now: the time for :meth:`pick`.

        Returns:
            The endpoint used (pass it to :meth:`learn` with the response's
            command) and what ``dial`` returned.

        Raises:
            DialError, OSError: the configured server failed too.
        """
        endpoint = self.pick(now)
        if endpoint is not self.origin:
            failure = "timed out"
            try:
                with trio.move_on_after(DETOUR_ATTEMPT_TIMEOUT):
                    return endpoint, await dial(endpoint)
            except (DialError, OSError) as exc:
                failure = str(exc)
            LOGGER.info(
                "detour port %s:%d failed (%s); back to the configured server",
                endpoint.host,
                endpoint.port,
                failure,
            )
            self.forget(endpoint)
        return self.origin, await dial(self.origin)
