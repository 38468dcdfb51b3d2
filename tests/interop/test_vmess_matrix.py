"""vtrio against real v2ray 4.34 and sing-box 1.14, as server and as client.

Theory of operation: ``matrix.vtrio_cases()`` turns the capability table into
one case per security, header kind and option that both ends support; each
case runs the full chain (SOCKS5 -> client -> VMess -> server -> echo) with
checksummed TCP payloads or UDP datagrams. The test id names the peer and its
version, e.g. ``v2ray-4.34-client->vtrio-server[aes-128-gcm,aead]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from tests.interop.matrix import vtrio_cases
from tests.interop.scenario import run_case

if TYPE_CHECKING:
    from pathlib import Path

    from tests.interop.matrix import Case

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("case", vtrio_cases(), ids=str)
async def test_vmess_interop(case: Case, tmp_path: Path) -> None:
    with trio.fail_after(60):
        await run_case(case, tmp_path)
