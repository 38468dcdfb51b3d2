"""Peer-only chains: a real client against the other real server, no vtrio.

Theory of operation: these cases run the very chain and traffic checks the
vtrio matrix uses, with a real peer on both ends. If one of them fails, the
harness (configs, ports, SOCKS5 client, echo target) is wrong, not vtrio; if
they pass, they also record what v2ray 4.34 and sing-box 1.14 do together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from tests.interop.matrix import Case, peer_chain_cases
from tests.interop.scenario import run_case

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.interop


@pytest.mark.parametrize("case", peer_chain_cases(), ids=str)
async def test_peer_chain(case: Case, tmp_path: Path) -> None:
    with trio.fail_after(30):
        await run_case(case, tmp_path)


async def test_v2ray_server_lacks_authenticated_length(tmp_path: Path) -> None:
    """Why the table gives v2ray 4.34 no AuthenticatedLength case (spec 6.5).

    v2ray 4.34 ignores option 0x10 and reads the sealed length as a masked
    one, so a sing-box client that turns it on gets nothing through: the
    echo comes back short, or the chain resets the connection (its log says
    "failed to transfer request > cipher: message authentication failed").
    """
    case = Case("sing-box", "v2ray", "aes-128-gcm", authenticated_length=True)
    refused = False
    try:
        with trio.fail_after(30):
            await run_case(case, tmp_path)
    except* (AssertionError, trio.BrokenResourceError, OSError):
        refused = True
    assert refused, "AuthenticatedLength got through v2ray 4.34"
