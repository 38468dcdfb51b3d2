"""Where Xray's JSON differs from v2ray 4's: the flat vmess outbound.

Theory of operation: Xray accepts everything ``v2ray.py`` describes for VMess
(``clients`` or ``users``, ``raw`` for ``tcp``, ``host`` on WebSocket), and
since v1.251015.0 also a vmess outbound with the server written directly in
``settings`` instead of a ``vnext`` list. Both forms decode into
:class:`VMessOutboundXray`; ``normalize.py`` turns either into servers.
"""

from __future__ import annotations

from vtrio.config.v2ray import Port, V2Base, VNextV2


class VMessOutboundXray(V2Base):
    """vmess outbound ``settings``: v2ray's ``vnext`` or Xray's flat form."""

    vnext: list[VNextV2] | None = None
    address: str | None = None
    port: Port | None = None
    id: str | None = None
    alter_id: int = 0
    security: str = "auto"
    level: int = 0
    email: str = ""
    experiments: str = ""
