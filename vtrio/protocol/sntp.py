"""SNTP (RFC 4330) client messages: the clock offset from one exchange.

Theory of operation: VMess headers carry the sender's Unix time and are
refused beyond 120 s of the receiver's, so a host whose clock it cannot set
(containers) or does not keep (routers) can correct it from an NTP server.
:func:`request` builds the 48-byte client packet; its transmit timestamp is
random, a nonce the server copies back (RFC 5905 allows it), so a reply that
does not answer this request is refused. :func:`clock_offset` checks a reply
and gives the server's clock minus ours from the four timestamps of the
exchange. Nothing here reads a clock or a socket.
"""

from __future__ import annotations

import struct

from vtrio.errors import RemoteProtocolError

PACKET_SIZE = 48
# Seconds from 1900-01-01 (NTP's era 0) to 1970-01-01.
NTP_TO_UNIX = 2_208_988_800
CLIENT_HEAD = 0b00_100_011  # leap 0, version 4, mode 3 (client)
SERVER_MODES = {4, 5}  # server, broadcast
LEAP_UNSYNCHRONIZED = 3


def request(nonce: bytes) -> bytes:
    """A client packet whose transmit timestamp is the 8-byte ``nonce``."""
    if len(nonce) != 8:
        raise ValueError("the nonce is 8 bytes")
    return bytes((CLIENT_HEAD,)) + bytes(39) + nonce


def answers(reply: bytes, nonce: bytes) -> bool:
    """Whether ``reply`` echoes the request with this nonce (a late reply to
    an earlier request does not)."""
    return len(reply) >= PACKET_SIZE and reply[24:32] == nonce


def clock_offset(reply: bytes, nonce: bytes, sent: float, received: float) -> float:
    """The server's time minus ours, in seconds.

    Args:
        reply: the server's packet.
        nonce: the transmit timestamp of our request.
        sent, received: our Unix times when the request left and the reply
            came in.

    Raises:
        RemoteProtocolError: the reply is short, answers another request, or
            comes from a server that is not synchronised.
    """
    if len(reply) < PACKET_SIZE:
        raise RemoteProtocolError(f"NTP reply of {len(reply)} bytes")
    head, stratum = reply[0], reply[1]
    if head & 0b111 not in SERVER_MODES:
        raise RemoteProtocolError(f"NTP reply in mode {head & 0b111}")
    if head >> 6 == LEAP_UNSYNCHRONIZED or stratum == 0 or stratum > 15:
        raise RemoteProtocolError(f"NTP server not synchronised (stratum {stratum})")
    if not answers(reply, nonce):
        raise RemoteProtocolError("NTP reply does not answer this request")
    server_received = _unix(reply[32:40])
    server_sent = _unix(reply[40:48])
    return ((server_received - sent) + (server_sent - received)) / 2


def ntp_timestamp(unix: float) -> bytes:
    """A Unix time as an NTP timestamp (era 0, until 2036)."""
    seconds = int(unix) + NTP_TO_UNIX
    fraction = int((unix - int(unix)) * 2**32)
    return struct.pack("!II", seconds & 0xFFFF_FFFF, fraction)


def _unix(timestamp: bytes) -> float:
    seconds: int
    fraction: int
    seconds, fraction = struct.unpack("!II", timestamp)
    # Era 1 begins in 2036: a small count of seconds is after it.
    era = 2**32 if seconds < NTP_TO_UNIX else 0
    return seconds + era - NTP_TO_UNIX + fraction / 2**32
