"""Fixed vectors for every derivation, each named by where it comes from
(tests/vectors/vmess.json): upstream and third-party values first, then the
self-computed request-side regression data of spec appendix A.2."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.protocol.auth_id import auth_id_key, auth_id_time, make_auth_id
from vtrio.protocol.body import ChunkDecoder, ChunkEncoder, Framing
from vtrio.protocol.ciphers import aes_128_ecb, shake128
from vtrio.protocol.header import (
    AeadRequestSealer,
    AeadResponseSealer,
    encode_response,
    response_key_iv,
    seal_legacy_request,
)
from vtrio.protocol.ids import alter_ids, chacha_key, cmd_key, parse_user_id
from vtrio.protocol.instruction import (
    Command,
    Instruction,
    Option,
    Request,
    SecurityType,
    decode_instruction,
)
from vtrio.protocol.kdf import kdf, kdf16, kdf_each
from vtrio.protocol.legacy import legacy_auth, legacy_iv

from .helpers import VECTORS

REQ = VECTORS["request"]
CAPTURE = VECTORS["v2fly_response_capture"]


def h(name: str) -> bytes:
    return bytes.fromhex(REQ[name])


def test_kdf_matches_v2fly_kdf_test() -> None:
    vector = VECTORS["kdf"]
    path = [p.encode() for p in vector["path"]]
    assert kdf(vector["key"].encode(), *path).hex() == vector["expected"]
    assert reference_kdf(vector["key"].encode(), *path).hex() == vector["expected"]


def test_kdf_long_path_element_is_hashed_first() -> None:
    # HMAC hashes keys longer than the block; 65 bytes must differ from 64.
    assert kdf(b"k", b"x" * 65) != kdf(b"k", b"x" * 64)
    assert kdf16(b"k", b"p") == kdf(b"k", b"p")[:16]


def reference_kdf(key: bytes, *path: bytes) -> bytes:
    """The KDF as v2ray writes it: ``hmac.New`` nested over ``hmac.New``."""

    def nest(outer: Any, element: bytes) -> Any:
        def make(data: bytes = b"") -> hmac.HMAC:
            return hmac.new(element, data, outer)

        return make

    make: Any = hashlib.sha256
    for element in (b"VMess AEAD KDF", *path):
        make = nest(make, element)
    return bytes(make(key).digest())


path_elements = st.binary(max_size=80)


@given(
    key=st.binary(max_size=40),
    salts=st.lists(path_elements, min_size=1, max_size=4),
    path=st.lists(path_elements, max_size=3),
)
def test_kdf_and_kdf_each_match_the_nested_hmac_definition(
    key: bytes, salts: list[bytes], path: list[bytes]
) -> None:
    expected = [reference_kdf(key, salt, *path) for salt in salts]
    assert kdf_each(key, tuple(salts), *path) == expected
    assert kdf(key, salts[0], *path) == expected[0]
    assert kdf(key) == reference_kdf(key)


def test_uuid5_custom_id_matches_xray() -> None:
    vector = VECTORS["uuid5"]
    assert str(parse_user_id(vector["text"])) == vector["expected"]


@pytest.mark.parametrize(
    "text",
    ["b831381d-6324-4d53-ad4f-8cda48b30811", "b831381d63244d53ad4f8cda48b30811"],
)
def test_uuid_text_forms(text: str) -> None:
    assert parse_user_id(text) == uuid.UUID(REQ["uuid"])


def test_cmd_key_matches_third_party_vector() -> None:
    vector = VECTORS["cmd_key"]
    assert cmd_key(uuid.UUID(vector["uuid"])).hex() == vector["expected"]


def test_v2fly_response_capture_header_opens() -> None:
    key, iv = response_key_iv(
        bytes.fromhex(CAPTURE["request_key"]),
        bytes.fromhex(CAPTURE["request_iv"]),
        legacy=False,
    )
    wire = bytes.fromhex(CAPTURE["response_header"])
    sealer = AeadResponseSealer(key, iv)
    assert sealer.open_length(wire[:18]) == 4
    assert sealer.open(wire[18:]).hex() == CAPTURE["response_header_plain"]


def test_v2fly_response_capture_first_chunk_size_and_padding() -> None:
    # Opt 0x0D on the response: padding is drawn first, then the mask (6.2).
    request_key = bytes.fromhex(CAPTURE["request_key"])
    request_iv = bytes.fromhex(CAPTURE["request_iv"])
    key, iv = response_key_iv(request_key, request_iv, legacy=False)
    framing = Framing.of(SecurityType.AES_128_GCM, Option(0x0D), datagram=False)
    decoder = ChunkDecoder(
        framing, key=key, iv=iv, request_key=request_key, request_iv=request_iv
    )
    decoder.feed(bytes.fromhex(CAPTURE["first_length_field"]))
    assert decoder.next_payload() is None  # the chunk body is not there
    assert decoder._pending == (
        CAPTURE["first_chunk_size"],
        CAPTURE["first_chunk_padding"],
    )


def test_alter_id_chain() -> None:
    assert [str(u) for u in alter_ids(uuid.UUID(REQ["uuid"]), 2)] == REQ["alter_ids"]


def test_auth_id_vector() -> None:
    cipher = aes_128_ecb(auth_id_key(h("cmd_key")))
    assert auth_id_key(cmd_key(uuid.UUID(REQ["uuid"]))) == h("auth_id_key")
    eauid = make_auth_id(cipher, REQ["now"], lambda n: h("auth_id_random"))
    assert cipher.decrypt(eauid) == h("auth_id_plain")
    assert eauid == h("auth_id")
    assert auth_id_time(cipher, eauid) == REQ["now"]


def instruction() -> Instruction:
    return Instruction(
        iv=h("request_iv"),
        key=h("request_key"),
        response_auth=REQ["response_auth"],
        options=Option(REQ["options"]),
        security=REQ["security"],
        request=Request(Command.TCP, REQ["domain"], REQ["port"]),
    )


def test_instruction_vector_both_ways() -> None:
    assert instruction().encode() == h("instruction")
    assert decode_instruction(h("instruction")) == instruction()


def test_aead_request_header_vector() -> None:
    sealer = AeadRequestSealer(h("cmd_key"), h("auth_id"), h("connection_nonce"))
    assert sealer.seal(h("instruction")) == h("aead_header")
    assert sealer.open_length(h("aead_header")[16:34]) == len(h("instruction"))
    assert sealer.open(h("aead_header")[42:]) == h("instruction")


def test_response_keys_and_body_keys() -> None:
    aead = response_key_iv(h("request_key"), h("request_iv"), legacy=False)
    legacy = response_key_iv(h("request_key"), h("request_iv"), legacy=True)
    assert aead == (h("aead_response_key"), h("aead_response_iv"))
    assert legacy == (h("legacy_response_key"), h("legacy_response_iv"))
    assert chacha_key(h("request_key")) == h("chacha_key")
    assert kdf16(h("request_key"), b"auth_len") == h("auth_length_key")
    assert shake128(h("request_iv")).read(8) == h("shake_prefix")
    assert hashlib.md5(h("request_key")).digest() == h("chacha_key")[:16]


def test_aead_response_header_vector() -> None:
    sealer = AeadResponseSealer(h("aead_response_key"), h("aead_response_iv"))
    plain = encode_response(REQ["response_auth"], None)
    assert sealer.seal(plain) == h("aead_response_header")


def test_request_chunk0_vector() -> None:
    framing = Framing.of(
        SecurityType.AES_128_GCM, Option(REQ["options"]), datagram=False
    )
    encoder = ChunkEncoder(
        framing,
        key=h("request_key"),
        iv=h("request_iv"),
        request_key=h("request_key"),
        request_iv=h("request_iv"),
        random=bytes,  # zero padding bytes, as the spec prints them
    )
    chunk = encoder.encode_stream(REQ["chunk0_payload"].encode())
    assert chunk == h("chunk0_without_padding") + bytes(REQ["chunk0_padding"])


def test_legacy_header_vector() -> None:
    timestamp = REQ["legacy_timestamp"]
    user_id = uuid.UUID(REQ["uuid"])
    assert legacy_auth(user_id, timestamp) == h("legacy_auth")
    assert legacy_iv(timestamp) == h("legacy_iv")
    wire = seal_legacy_request(user_id, h("cmd_key"), timestamp, h("instruction"))
    assert wire == h("legacy_header")
