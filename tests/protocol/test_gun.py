"""The gRPC "gun" framing: Hunk and MultiHunk messages, and service paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import RemoteProtocolError
from vtrio.protocol.gun import HunkDecoder, hunk_head, hunk_payloads, service_path


def encode_hunk(data: bytes) -> bytes:
    return hunk_head(len(data)) + data


def test_a_hunk_is_a_grpc_message_with_field_one() -> None:
    assert encode_hunk(b"abc") == b"\x00\x00\x00\x00\x05\x0a\x03abc"
    big = encode_hunk(b"x" * 300)
    assert big[:8] == b"\x00\x00\x00\x01\x2f\x0a\xac\x02"  # 303 bytes; varint 300


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=8), st.data())
def test_messages_split_anywhere_give_back_the_writes(
    writes: list[bytes], data: st.DataObject
) -> None:
    wire = b"".join(encode_hunk(w) for w in writes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = HunkDecoder()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += decoder.receive_data(wire[start:end])
    assert got == writes
    assert not decoder.pending


def test_multi_hunks_and_unknown_fields() -> None:
    # MultiHunk: two field-1 entries; then field 2 (varint) and field 3
    # (bytes), which are skipped.
    message = b"\x0a\x02ab\x0a\x01c\x10\x96\x01\x1a\x02zz"
    assert hunk_payloads(message) == [b"ab", b"c"]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x01\x00\x00\x00\x01\x00", "compressed"),
        (b"\x00\x01\x00\x00\x00", "too large"),
        (b"\x00\x00\x00\x00\x03\x0a\x05a", "runs past"),
        (b"\x00\x00\x00\x00\x01\x0b", "wire type"),
    ],
)
def test_bad_messages_are_refused(wire: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        HunkDecoder().receive_data(wire)


@pytest.mark.parametrize(
    ("name", "multi", "path"),
    [
        ("", False, "//Tun"),  # as v2ray, Xray and sing-box build it
        ("vtrio.Tunnel", False, "/vtrio.Tunnel/Tun"),
        ("my svc", True, "/my%20svc/TunMulti"),
        ("a/b", False, "/a%2Fb/Tun"),
        ("/my/sample/path1|path2", False, "/my/sample/path1"),
        ("/my/sample/path1|path2", True, "/my/sample/path2"),
        ("/my/sample/path1", True, "/my/sample/path1"),
    ],
)
def test_service_paths(name: str, multi: bool, path: str) -> None:
    assert service_path(name, multi=multi) == path
