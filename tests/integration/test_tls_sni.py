"""A TLS server with several certificates serves the one the client's SNI
names, and with Xray's ``rejectUnknownSni`` refuses names none is for; a
client with Xray's ``verifyPeerCertByName`` checks other names than its SNI.

Which certificate came back is told by the client's pin of it (Xray's
``pinnedPeerCertSha256``): a client pinned to the other one is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl

import pytest
import trio

from tests.integration.test_transport import (
    echo,
    start_server,
    stream_settings,
    tls_echo,
)
from tests.protocol.test_sniff import hand_built_hello
from tests.support.certs import make_pki
from vtrio.config.model import Certificate, TLSSettings
from vtrio.errors import DialError
from vtrio.net.transport import dial
from vtrio.protocol.x509 import public_key_info

A_NAMES = ("a.example", "127.0.0.1")
B_NAMES = ("b.example", "*.b.example")


def served(names: tuple[str, ...]) -> Certificate:
    pki = make_pki(names)
    return Certificate(certificate_pem=pki.cert_pem, key_pem=pki.key_pem)


def pinned_to(names: tuple[str, ...], server_name: str) -> TLSSettings:
    """A client that asks for ``server_name`` and trusts only the leaf made
    for ``names``."""
    leaf = ssl.PEM_cert_to_DER_cert(make_pki(names).cert_pem)
    return TLSSettings(
        server_name=server_name,
        pinned_cert_sha256=(hashlib.sha256(leaf).digest(),),
        disable_system_root=True,
    )


def two_certificates(*, reject_unknown_sni: bool = False) -> TLSSettings:
    return TLSSettings(
        certificates=(served(A_NAMES), served(B_NAMES)),
        reject_unknown_sni=reject_unknown_sni,
    )


@pytest.mark.parametrize(
    ("server_name", "names"),
    [
        ("a.example", A_NAMES),
        ("b.example", B_NAMES),
        ("x.b.example", B_NAMES),  # the wildcard
        ("elsewhere.example", A_NAMES),  # no match: the first
        ("127.0.0.1", A_NAMES),  # an address sends no SNI: the first
    ],
)
async def test_the_sni_picks_the_certificate(
    server_name: str, names: tuple[str, ...]
) -> None:
    client = pinned_to(names, server_name)
    assert await tls_echo(client, b"sni", two_certificates()) == b"sni"
    other = B_NAMES if names == A_NAMES else A_NAMES
    with pytest.raises(DialError, match="pinned"):
        await tls_echo(pinned_to(other, server_name), b"sni", two_certificates())


@pytest.mark.parametrize("server_name", ["a.example", "x.b.example"])
async def test_reject_unknown_sni_serves_the_names_it_has(server_name: str) -> None:
    names = A_NAMES if server_name == "a.example" else B_NAMES
    server = two_certificates(reject_unknown_sni=True)
    assert await tls_echo(pinned_to(names, server_name), b"ok", server) == b"ok"


@pytest.mark.parametrize(
    "server_name", ["elsewhere.example", "b.example.org", "127.0.0.1"]
)
async def test_reject_unknown_sni_refuses_other_names_and_none(
    server_name: str,
) -> None:
    server = two_certificates(reject_unknown_sni=True)
    with pytest.raises(DialError, match=r"TLS handshake .* failed"):
        await tls_echo(pinned_to(A_NAMES, server_name), b"no", server)


async def test_reject_unknown_sni_applies_to_a_single_certificate() -> None:
    server = TLSSettings(certificates=(served(A_NAMES),), reject_unknown_sni=True)
    assert await tls_echo(pinned_to(A_NAMES, "a.example"), b"ok", server) == b"ok"
    with pytest.raises(DialError, match=r"TLS handshake .* failed"):
        await tls_echo(pinned_to(A_NAMES, "elsewhere.example"), b"no", server)


def trusting_ca_of(
    names: tuple[str, ...], server_name: str, verify_names: tuple[str, ...]
) -> TLSSettings:
    """A client that sends ``server_name``, trusts the CA of the leaf made
    for ``names`` and checks the server's certificate against ``verify_names``."""
    ca = Certificate(certificate_pem=make_pki(names).ca_pem, usage="verify")
    return TLSSettings(
        server_name=server_name,
        certificates=(ca,),
        disable_system_root=True,
        verify_names=verify_names,
    )


@pytest.mark.parametrize(
    "verify_names",
    [("b.example",), ("nope.example", "x.b.example"), ("X.B.Example",)],
)
async def test_verify_peer_cert_by_name_checks_other_names_than_the_sni(
    verify_names: tuple[str, ...],
) -> None:
    # Xray's verifyPeerCertByName: the SNI says one name, the certificate is
    # checked against others (here the first certificate serves: no SNI match).
    server = TLSSettings(certificates=(served(B_NAMES),))
    client = trusting_ca_of(B_NAMES, "front.example", verify_names)
    assert await tls_echo(client, b"named", server) == b"named"


@pytest.mark.parametrize(
    ("verify_names", "trusted"),
    [
        (("front.example",), B_NAMES),  # the SNI is not what is checked
        (("y.x.b.example",), B_NAMES),  # a wildcard is one label only
        (("b.example",), A_NAMES),  # the chain is still verified
    ],
)
async def test_verify_peer_cert_by_name_refuses_a_certificate_for_none_of_them(
    verify_names: tuple[str, ...], trusted: tuple[str, ...]
) -> None:
    server = TLSSettings(certificates=(served(B_NAMES),))
    client = trusting_ca_of(trusted, "front.example", verify_names)
    with pytest.raises(
        DialError, match=r"verifyPeerCertByName|certificate verify failed"
    ):
        await tls_echo(client, b"no", server)


async def test_verify_peer_cert_by_name_takes_an_ip_address() -> None:
    server = TLSSettings(certificates=(served(A_NAMES),))
    client = trusting_ca_of(
        A_NAMES, server_name="front.example", verify_names=("127.0.0.1",)
    )
    assert await tls_echo(client, b"ip", server) == b"ip"


async def test_a_server_name_that_is_not_ascii_fails_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The ssl module reports such a name as an unraisable error (a traceback
    on stderr) before the SNI callback runs: a prober could fill the
    terminal with them. The handshake fails, the server goes on, nothing is
    printed."""
    errors: list[BaseException] = []
    hello = hand_built_hello([(0, "bücher.example".encode())])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            settings = stream_settings("tcp", "tls", two_certificates())
            port = await start_server(nursery, settings, echo, errors)
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(hello)
                    with trio.move_on_after(5):
                        while await stream.receive_some():
                            pass
            client = pinned_to(A_NAMES, "a.example")
            assert await tls_echo(client, b"still", two_certificates()) == b"still"
            nursery.cancel_scope.cancel()
    assert len(errors) == 3
    assert all("TLS handshake failed" in str(error) for error in errors)
    assert capfd.readouterr().err == ""


CLIENT_NAMES = ("client.example",)


def requiring_client_certificates(*cas: str) -> TLSSettings:
    """A server on the A certificate that asks clients for one signed by
    ``cas`` (PEM), v2fly's ``verifyClientCertificate``."""
    authorities = tuple(
        Certificate(certificate_pem=ca, usage="verifyclient") for ca in cas
    )
    return TLSSettings(
        certificates=(served(A_NAMES), *authorities), verify_client_certificate=True
    )


def showing(pki_names: tuple[str, ...] | None) -> TLSSettings:
    """A client of the A server that shows the client certificate made for
    ``pki_names`` (None: shows none)."""
    client = pinned_to(A_NAMES, "a.example")
    if pki_names is None:
        return client
    pki = make_pki(pki_names, client=True)
    own = Certificate(certificate_pem=pki.cert_pem, key_pem=pki.key_pem)
    return dataclasses.replace(client, certificates=(own,))


async def test_a_client_certificate_signed_by_a_verifyclient_ca_is_let_in() -> None:
    server = requiring_client_certificates(make_pki(CLIENT_NAMES, client=True).ca_pem)
    assert await tls_echo(showing(CLIENT_NAMES), b"mutual", server) == b"mutual"


@pytest.mark.parametrize(
    ("shown", "reason"),
    [(None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"), (("other.example",), "verify")],
    ids=["none", "another-ca"],
)
async def test_a_client_without_a_certificate_from_those_cas_is_refused(
    shown: tuple[str, ...] | None, reason: str
) -> None:
    server = requiring_client_certificates(make_pki(CLIENT_NAMES, client=True).ca_pem)
    errors: list[BaseException] = []
    received = b"?"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            settings = stream_settings("tcp", "tls", server)
            port = await start_server(nursery, settings, echo, errors)
            client = stream_settings("tcp", "tls", showing(shown))
            try:
                # In TLS 1.3 the client is done with the handshake first: the
                # refusal shows on its first read.
                async with await dial(client, "127.0.0.1", port) as stream:
                    await stream.send_all(b"no")
                    received = bytes(await stream.receive_some())
            except (DialError, trio.BrokenResourceError):
                received = b""
            nursery.cancel_scope.cancel()
    assert received == b""
    (error,) = errors
    assert "TLS handshake failed" in str(error)
    assert reason in str(error)


def key_pin(pem: str) -> bytes:
    """The SHA-256 of a certificate's SubjectPublicKeyInfo (Xray's
    pinnedPeerCertificatePublicKeySha256, decoded)."""
    return hashlib.sha256(public_key_info(ssl.PEM_cert_to_DER_cert(pem))).digest()


@pytest.mark.parametrize("pinned", ["leaf", "ca"])
async def test_a_pinned_public_key_in_the_verified_chain_is_accepted(
    pinned: str,
) -> None:
    pki = make_pki(A_NAMES)
    server = TLSSettings(certificates=(served(A_NAMES),))
    pin = key_pin(pki.cert_pem if pinned == "leaf" else pki.ca_pem)
    client = dataclasses.replace(
        trusting_ca_of(A_NAMES, "a.example", ()), pinned_key_sha256=(pin,)
    )
    assert await tls_echo(client, b"pinned", server) == b"pinned"


@pytest.mark.parametrize(
    ("trusted", "reason"),
    [(A_NAMES, "pinned public key"), (B_NAMES, "certificate verify failed")],
    ids=["other-key", "untrusted-chain"],
)
async def test_a_chain_without_a_pinned_key_or_unverified_is_refused(
    trusted: tuple[str, ...], reason: str
) -> None:
    server = TLSSettings(certificates=(served(A_NAMES),))
    pin = key_pin(make_pki(B_NAMES).cert_pem)
    if trusted == B_NAMES:  # the server's own key, but a chain nobody trusts
        pin = key_pin(make_pki(A_NAMES).cert_pem)
    client = dataclasses.replace(
        trusting_ca_of(trusted, "a.example", ()), pinned_key_sha256=(pin,)
    )
    with pytest.raises(DialError, match=reason):
        await tls_echo(client, b"no", server)
