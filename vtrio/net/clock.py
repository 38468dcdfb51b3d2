"""The wall clock that VMess timestamps come from, optionally set by NTP.

Theory of operation: every header sealed or checked, the legacy time table
and the dynamic ports read :func:`unix_now`: the system clock plus an offset
that is zero unless the config names an NTP server (``"ntp"``, a vtrio key
that v2ray ignores; ``vtrio client --ntp``). Then :func:`keep_synced` asks
that server at start-up and every ``interval`` and keeps the offset it
measures, for the whole process, since it corrects this host's clock and not
one connection's. A server that does not answer leaves the last offset in
place and is asked again a minute later; the offset returns to zero when the
task ends.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

import trio

from vtrio.errors import RemoteProtocolError
from vtrio.protocol import sntp

if TYPE_CHECKING:
    from vtrio.config.model import Ntp

LOGGER = logging.getLogger("vtrio.net.clock")
QUERY_TIMEOUT = 3.0
RETRY_AFTER = 60.0
# Offsets past this get a warning: VMess refuses more than 120 s.
NOTABLE_OFFSET = 30.0

_offset = 0.0


def unix_now() -> int:
    """Unix seconds, corrected by the last NTP offset."""
    return int(time.time() + _offset)


async def query_offset(host: str, port: int) -> float:
    """One SNTP exchange: the server's clock minus the system clock.

    Raises:
        OSError: the name does not resolve or the packet cannot be sent.
        RemoteProtocolError: the reply is not an answer from a synchronised
            server.
        trio.TooSlowError: no answer within ``QUERY_TIMEOUT``.
    """
    with trio.fail_after(QUERY_TIMEOUT):
        family, kind, proto, _, address = (
            await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        )[0]
        with trio.socket.socket(family, kind, proto) as sock:
            await sock.connect(address)
            nonce = os.urandom(8)
            sent = time.time()
            await sock.send(sntp.request(nonce))
            while True:
                reply = await sock.recv(1024)
                received = time.time()
                if len(reply) < sntp.PACKET_SIZE or sntp.answers(reply, nonce):
                    # A short reply is refused there, with its reason.
                    return sntp.clock_offset(reply, nonce, sent, received)
                # A late answer to an earlier request: wait for this one's.


async def keep_synced(
    ntp: Ntp, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep :func:`unix_now` set from ``ntp``; started once the first
    exchange succeeded or failed, so that serving waits at most one query."""
    global _offset
    try:
        while True:
            delay = ntp.interval
            try:
                offset = await query_offset(ntp.server, ntp.port)
            except (OSError, RemoteProtocolError, trio.TooSlowError) as exc:
                LOGGER.warning("NTP %s: %s", ntp.server, str(exc) or "no answer")
                delay = min(RETRY_AFTER, ntp.interval)
            else:
                notable = abs(offset) > NOTABLE_OFFSET
                LOGGER.log(
                    logging.WARNING if notable else logging.INFO,
                    "NTP %s: the clock is %+.3f s off",
                    ntp.server,
                    offset,
                )
                _offset = offset
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED  # started once
            await trio.sleep(delay)
    finally:
        _offset = 0.0
