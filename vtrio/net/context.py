"""What every connection handler needs: config, dispatcher, logs.

Theory of operation: one :class:`ServerContext` lives as long as
``server.run``; the handlers of all inbounds share it. It also owns the two
log habits of the runtime: the v2ray-like access line per tunnel and rejection
lines rate-limited per source address, so a scanner cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vtrio.config.model import Config
from vtrio.net.outbound import Dispatcher, Session
from vtrio.net.transport.tcp import local_name

if TYPE_CHECKING:
    import trio

    from vtrio.config.model import Inbound, LevelPolicy
    from vtrio.net.outbound import Destination
    from vtrio.net.relay import Traffic

ACCESS_LOG = logging.getLogger("vtrio.access")
LOGGER = logging.getLogger("vtrio.net.inbound")

# Rejection lines per source address and window.
REJECTIONS_PER_WINDOW = 5
REJECTION_WINDOW = 60.0
MAX_TRACKED_SOURCES = 4096


@dataclass
class RejectionLimiter:
    """Allows a few log lines per source per window; counts the rest."""

    _seen: dict[str, tuple[float, int]] = field(default_factory=dict)

    def allow(self, source: str, now: float) -> bool:
        start, count = self._seen.get(source, (now, 0))
        if now - start > REJECTION_WINDOW:
            start, count = now, 0
        if len(self._seen) >= MAX_TRACKED_SOURCES and source not in self._seen:
            self._seen.clear()
        self._seen[source] = (start, count + 1)
        return count < REJECTIONS_PER_WINDOW


@dataclass
class ServerContext:
    """Shared by every connection of one running config."""

    config: Config
    dispatcher: Dispatcher
    limiter: RejectionLimiter = field(default_factory=RejectionLimiter)

    def session(
        self,
        inbound: Inbound,
        source: str,
        raw: trio.abc.AsyncResource,
        *,
        level: int,
        email: str = "",
    ) -> Session:
        """The session of a connection ``inbound`` accepted (``raw`` its
        stream); its local address is looked up only when a rule needs it."""
        return Session(
            inbound_tag=inbound.tag,
            source=source,
            email=email,
            level=level,
            sniffing=inbound.sniffing,
            local=local_name(raw) if self.dispatcher.needs_local else "",
        )

    def handshake_timeout(self) -> float:
        """The handshake deadline: always the level-0 policy (spec section 10)."""
        return self.config.policy.level(0).handshake

    def policy(self, level: int) -> LevelPolicy:
        return self.config.policy.level(level)

    def log_rejection(self, source: str, inbound_tag: str, reason: str) -> None:
        """An info line saying why a handshake failed, rate-limited per source."""
        host = source.rsplit(":", 1)[0]
        if self.limiter.allow(host, time.monotonic()):
            LOGGER.info("%s rejected [%s]: %s", source, inbound_tag, reason)

    @staticmethod
    def log_access(
        session: Session,
        destination: Destination,
        outbound_tag: str,
        traffic: Traffic,
        status: str = "accepted",
    ) -> None:
        """One line per tunnel, like v2ray's access log, plus bytes and time."""
        ACCESS_LOG.info(
            "from %s %s %s [%s -> %s]%s up %d down %d %.1fs",
            session.source,
            status,
            destination,
            session.inbound_tag or "-",
            outbound_tag or "-",
            f" email: {session.email}" if session.email else "",
            traffic.up,
            traffic.down,
            time.monotonic() - session.started,
        )
