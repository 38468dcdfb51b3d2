"""vtrio client <-> vtrio server through the whole chain, over tls, ws and ws+tls.

Theory of operation: the same chain the interop suite runs against real peers,
SOCKS5 -> vtrio client ==VMess over the transport==> vtrio server -> echo, with
vtrio (in-process, from v2ray JSON) on both ends; the payload is checksummed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.interop.test_transport_interop import VTRIO, run_vmess_chain

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("transport", "early"),
    [
        pytest.param("tls", False, id="tls"),
        pytest.param("ws", False, id="ws"),
        pytest.param("ws+tls", False, id="ws+tls"),
        pytest.param("ws", True, id="ws-early"),
        pytest.param("ws+tls", True, id="ws+tls-early"),
    ],
)
async def test_vtrio_to_vtrio(transport: str, early: bool, tmp_path: Path) -> None:
    await run_vmess_chain(VTRIO, VTRIO, transport, early, tmp_path)
