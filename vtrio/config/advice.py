"""Warnings about a config that loads but is weaker than it may look.

Theory of operation: :func:`advisories` reads a loaded ``model.Config`` and
returns one line per finding; ``vtrio serve``/``client`` log them as warnings
at start-up and ``vtrio check`` prints them. Two findings exist: the legacy
(MD5) header in use, whose authentication an observer can replay and probe,
and a body sent in clear (``none``/``zero``) over plain TCP to a server that
is not on this host or a private network.
"""

from __future__ import annotations

import ipaddress

from vtrio.config import model

PLAIN_SECURITIES = {model.Security.NONE, model.Security.ZERO}


def advisories(config: model.Config) -> list[str]:
    """One line per weakness found in ``config``."""
    found = []
    for inbound in config.inbounds:
        settings = inbound.settings
        if not isinstance(settings, model.VMessInboundSettings):
            continue
        legacy = [user for user in settings.users if user.alter_id]
        if legacy and not settings.aead_forced:
            found.append(
                f"inbound {inbound.tag or '-'}: {len(legacy)} user(s) with alterId > 0"
                " also accept the legacy (MD5) header, which can be replayed and"
                " probed; AEAD clients need alterId 0"
            )
    for outbound in config.outbounds:
        vmess = outbound.settings
        if not isinstance(vmess, model.VMessOutboundSettings):
            continue
        for server in vmess.servers:
            where = f"outbound {outbound.tag or '-'} ({server.address}:{server.port})"
            if any(user.alter_id for user in server.users):
                found.append(
                    f"{where}: alterId > 0 sends the legacy (MD5) header, which can"
                    " be replayed and probed; servers since v2ray 4.35 refuse it"
                )
            plain = sorted(
                {user.security.value for user in server.users}
                & {security.value for security in PLAIN_SECURITIES}
            )
            if plain and outbound.stream.security != "tls" and _remote(server.address):
                found.append(
                    f"{where}: security {'/'.join(plain)} without TLS sends the"
                    " traffic unencrypted"
                )
    return found


def _remote(address: str) -> bool:
    """Not this host and not a private network (names count as remote)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address != "localhost"
    return not (ip.is_loopback or ip.is_private or ip.is_link_local)
