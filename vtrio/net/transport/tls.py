"""TLS layer: ``ssl.SSLContext`` construction and ``trio.SSLStream`` handshakes.

Theory of operation: a context is built once per distinct ``TLSSettings`` (they are
frozen and hashable, so a small cache keyed by them serves every connection of an
inbound or outbound) and every connection only wraps its stream in
``trio.SSLStream`` and runs the handshake eagerly, so failures surface here with a
readable reason instead of on the first VMess read. Server failures raise
``RemoteProtocolError`` (the peer sent bytes that are not TLS, or gave up),
client failures raise ``DialError`` (wrong name, untrusted certificate, ...).

Inline PEM certificates are written to a private temporary directory just long
enough for ``load_cert_chain`` to read them, because the stdlib only loads key
pairs from files; nothing stays on disk afterwards.

A client with pinned chain hashes (v2ray's ``pinnedPeerCertificateChainSha256``)
checks, after the handshake, the hash of the certificates the server sent, in
the order sent (:func:`chain_hash`, v2ray's fold of SHA-256s); with
``allowInsecure`` that check replaces certificate verification, as in v2ray,
so a self-signed server can be trusted by its hash alone.

TLS cannot half-close through ``trio.SSLStream``; ``TLSStream`` therefore
implements ``send_eof`` as "no more sending" without touching the wire. VMess marks
the end of each direction with its own empty chunk, so peers never need the TCP
FIN to see where a direction ends; the connection closes with ``aclose``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import re
import ssl
import sys
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio

from vtrio.errors import ConfigError, DialError, RemoteProtocolError
from vtrio.protocol.x509 import (
    CertificateNames,
    certificate_for,
    certificate_names,
    is_for,
    public_key_info,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vtrio.config.model import Certificate, TLSSettings

# v2ray's "minVersion" strings.
_TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}

# Go's (IANA's) names of the TLS 1.2 suites, and OpenSSL's.
_GO_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
_TLS13_SUITES = {
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
}
LOGGER = logging.getLogger("vtrio.net.transport.tls")
_PEM_BEGIN, _PEM_END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
# ssl.ENCODING_DER, which the ssl module does not re-export.
_DER = 2
# OpenSSL reasons a server sees when the client did not speak TLS at all.
_PLAINTEXT_REASONS = {"HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"}


@contextmanager
def _certificate_files(
    certificate: Certificate, where: str
) -> Iterator[tuple[str, str]]:
    """Yield (certificate file, key file), writing inline PEM to a private temp dir."""
    if certificate.certificate_pem is None and certificate.key_pem is None:
        if not certificate.certificate_file or not certificate.key_file:
            raise ConfigError("needs certificateFile and keyFile", path=where)
        yield certificate.certificate_file, certificate.key_file
        return
    if not certificate.certificate_pem or not certificate.key_pem:
        raise ConfigError("needs both certificate and key", path=where)
    # mkdtemp makes the directory mode 0700: the key is never world-readable.
    with tempfile.TemporaryDirectory(prefix="vtrio-tls-") as directory:
        paths = (
            os.path.join(directory, "cert.pem"),
            os.path.join(directory, "key.pem"),
        )
        for path, text in zip(
            paths, (certificate.certificate_pem, certificate.key_pem), strict=True
        ):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
        yield paths


def _load_key_pair(
    context: ssl.SSLContext, certificate: Certificate, where: str
) -> None:
    with _certificate_files(certificate, where) as (cert_file, key_file):
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load certificate and key: {exc}", path=where
            ) from exc


def _load_trust_root(
    context: ssl.SSLContext, certificate: Certificate, where: str
) -> None:
    try:
        if certificate.certificate_pem:
            context.load_verify_locations(cadata=certificate.certificate_pem)
        elif certificate.certificate_file:
            context.load_verify_locations(cafile=certificate.certificate_file)
        else:
            raise ConfigError("a 'verify' certificate needs its data", path=where)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load trusted certificate: {exc}", path=where
        ) from exc


def _apply_common(
    context: ssl.SSLContext, settings: TLSSettings, alpn: tuple[str, ...]
) -> None:
    for given, field, bound in (
        (settings.min_version, "minVersion", "minimum_version"),
        (settings.max_version, "maxVersion", "maximum_version"),
    ):
        if given is None:
            continue
        if given not in _TLS_VERSIONS:
            raise ConfigError(
                f"unknown TLS version {given!r} (use one of "
                f"{', '.join(_TLS_VERSIONS)})",
                path=f"tlsSettings.{field}",
            )
        setattr(context, bound, _TLS_VERSIONS[given])
    if settings.cipher_suites:
        try:
            context.set_ciphers(_openssl_ciphers(settings.cipher_suites))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"this OpenSSL offers none of these suites ({exc.reason})",
                path="tlsSettings.cipherSuites",
            ) from exc
    if alpn:
        context.set_alpn_protocols(list(alpn))


def _openssl_ciphers(go_names: str) -> str:
    """OpenSSL's cipher list for Go's suite names (``a:b``, as v2ray reads
    them). TLS 1.3 suites are skipped: neither Go nor this list sets them.

    Raises:
        ConfigError: a name is not a suite vtrio knows.
    """
    chosen = []
    for name in filter(None, (part.strip() for part in go_names.split(":"))):
        if name in _TLS13_SUITES:
            continue
        openssl = _GO_CIPHER_SUITES.get(name)
        if openssl is None:
            raise ConfigError(
                f"unknown cipher suite {name!r}", path="tlsSettings.cipherSuites"
            )
        chosen.append(openssl)
    if not chosen:
        raise ConfigError(
            "no TLS 1.2 cipher suite left", path="tlsSettings.cipherSuites"
        )
    return ":".join(chosen)


@functools.cache
def server_context(settings: TLSSettings) -> ssl.SSLContext:
    """The server context of an inbound, built on first use and then shared.

    One context per ``encipherment`` certificate (OpenSSL keeps one key pair
    of each kind per context: a second would replace the first); with more
    than one, or with ``reject_unknown_sni``, the client's SNI picks one
    (:func:`certificate_for`) in the handshake.

    Args:
        settings: the inbound's TLS settings; needs one ``encipherment`` certificate.

    Returns:
        A context for ``trio.SSLStream(..., server_side=True)``.

    Raises:
        ConfigError: no usable certificate, an unreadable file, a bad version.
    """
    contexts: list[ssl.SSLContext] = []
    names: list[CertificateNames] = []
    for index, certificate in enumerate(settings.certificates):
        where = f"tlsSettings.certificates[{index}]"
        if certificate.usage == "issue":
            # v2ray signs leaf certificates on the fly with an "issue" CA; not built.
            raise ConfigError("usage 'issue' is not supported", path=f"{where}.usage")
        if certificate.usage == "encipherment":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _load_key_pair(context, certificate, where)
            _apply_common(context, settings, settings.alpn)
            if settings.verify_client_certificate:
                _require_client_certificates(context, settings)
            contexts.append(context)
            names.append(_leaf_names(certificate, where))
    if not contexts:
        raise ConfigError(
            "a TLS inbound needs a certificate with usage 'encipherment'",
            path="tlsSettings.certificates",
        )
    if len(contexts) > 1 or settings.reject_unknown_sni:
        contexts[0].sni_callback = functools.partial(
            _serve_named, contexts, names, settings.reject_unknown_sni
        )
        if sys.unraisablehook is not _quiet_bad_server_names:
            sys.unraisablehook = _quiet_bad_server_names
    return contexts[0]


def _quiet_bad_server_names(unraisable: Any) -> None:
    """The ssl module decodes a client's SNI before an SNI callback sees it,
    and reports bytes that are not ASCII as an unraisable error (a traceback
    on stderr) while the handshake fails; a prober could fill the terminal
    with them. That one case is logged at debug; anything else goes on to
    the default hook."""
    if unraisable.exc_type is UnicodeDecodeError and isinstance(
        unraisable.object, bytes
    ):
        LOGGER.debug("a TLS client sent a server name that is not ASCII")
        return
    sys.__unraisablehook__(unraisable)


def _require_client_certificates(
    context: ssl.SSLContext, settings: TLSSettings
) -> None:
    """Every client must show a certificate that chains to one of the
    ``verifyclient`` CAs (none given: every client is refused, as in v2fly)."""
    context.verify_mode = ssl.CERT_REQUIRED
    for index, certificate in enumerate(settings.certificates):
        if certificate.usage == "verifyclient":
            where = f"tlsSettings.certificates[{index}]"
            _load_trust_root(context, certificate, where)


def _serve_named(
    contexts: list[ssl.SSLContext],
    names: list[CertificateNames],
    reject_unknown: bool,
    connection: ssl.SSLObject | ssl.SSLSocket,
    server_name: str | None,
    _context: ssl.SSLContext,
) -> int | None:
    """The SNI callback: switch to the certificate for ``server_name``, or
    end the handshake with unrecognized_name."""
    chosen = certificate_for(server_name, names, reject_unknown=reject_unknown)
    if chosen is None:
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    if chosen:
        connection.context = contexts[chosen]
    return None


def _leaf_names(certificate: Certificate, where: str) -> CertificateNames:
    """The names of the first certificate of a loaded chain."""
    pem = certificate.certificate_pem
    if pem is None:
        assert certificate.certificate_file is not None  # loaded from it just now
        with open(
            certificate.certificate_file, encoding="ascii", errors="replace"
        ) as file:
            pem = file.read()
    try:
        return certificate_names(pem_certificates(pem)[0])
    except (IndexError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the certificate's names: {exc}", path=where
        ) from exc


def pem_certificates(text: str) -> list[bytes]:
    """The DER of each PEM certificate block in ``text``, in order.

    Raises:
        ValueError: a block is not Base64.
    """
    blocks = re.findall(f"{_PEM_BEGIN}.*?{_PEM_END}", text, re.DOTALL)
    return [ssl.PEM_cert_to_DER_cert(block) for block in blocks]


@functools.cache
def client_context(
    settings: TLSSettings, default_alpn: tuple[str, ...] = ()
) -> ssl.SSLContext:
    """The client context of an outbound, built on first use and then shared.

    Args:
        settings: the outbound's TLS settings.
        default_alpn: protocols offered when ``settings.alpn`` is empty (WebSocket
            needs ``http/1.1`` so that a server never picks h2).

    Returns:
        A context for ``trio.SSLStream`` on the client side.

    Raises:
        ConfigError: an unreadable certificate or a bad version.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not settings.disable_system_root:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    for index, certificate in enumerate(settings.certificates):
        where = f"tlsSettings.certificates[{index}]"
        if certificate.usage == "verify":
            _load_trust_root(context, certificate, where)
        elif certificate.usage == "encipherment":
            # A client certificate, for servers that ask for one.
            _load_key_pair(context, certificate, where)
    if settings.allow_insecure or settings.pinned_cert_sha256:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.verify_names:
        # The chain is still verified; the names are checked after the
        # handshake (OpenSSL checks only the name the client sends).
        context.check_hostname = False
    _apply_common(context, settings, settings.alpn or default_alpn)
    return context


class TLSStream(trio.abc.HalfCloseableStream):
    """A ``trio.SSLStream`` with ``send_eof`` meaning "this side sends no more".

    Attributes:
        ssl_stream: the wrapped stream (for ``selected_alpn_protocol`` and friends).
    """

    def __init__(self, ssl_stream: trio.SSLStream[trio.abc.Stream]) -> None:
        self.ssl_stream = ssl_stream
        self._eof_sent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("send_eof was already called")
        await self.ssl_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # See the module docstring: VMess' own end chunk carries the half-close.
        self._eof_sent = True
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.ssl_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.ssl_stream.aclose()


def _reason(exc: BaseException) -> str:
    """The most specific text trio/ssl give for a failed handshake."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if cause is not None:
        return str(cause) or type(cause).__name__
    return str(exc) or "connection closed during the handshake"


async def accept_tls(settings: TLSSettings, stream: trio.abc.Stream) -> TLSStream:
    """Run the server side of the TLS handshake.

    Args:
        settings: the inbound's TLS settings.
        stream: the accepted transport.

    Returns:
        The TLS stream, handshake done.

    Raises:
        RemoteProtocolError: the client did not complete a TLS handshake.
    """
    # https_compatible: a peer that closes without close_notify is a plain EOF;
    # VMess detects truncation itself with its end chunk.
    ssl_stream = trio.SSLStream(
        stream, server_context(settings), server_side=True, https_compatible=True
    )
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        reason = _reason(exc)
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError) and cause.reason in _PLAINTEXT_REASONS:
            reason += " (the client is not speaking TLS: check its security setting)"
        raise RemoteProtocolError(f"TLS handshake failed: {reason}") from exc
    return TLSStream(ssl_stream)


async def dial_tls(
    settings: TLSSettings,
    stream: trio.abc.Stream,
    host: str,
    port: int,
    *,
    default_alpn: tuple[str, ...] = (),
) -> TLSStream:
    """Run the client side of the TLS handshake.

    Args:
        settings: the outbound's TLS settings.
        stream: the connected transport.
        host: the dialled host; the server name when ``serverName`` is unset.
        port: the dialled port, for the error message.
        default_alpn: ALPN offered when the settings name none.

    Returns:
        The TLS stream, handshake done.

    Raises:
        DialError: the handshake failed (names the server name and the reason).
    """
    server_name = settings.server_name or host
    ssl_stream = trio.SSLStream(
        stream,
        client_context(settings, default_alpn),
        server_hostname=server_name,
        https_compatible=True,
    )
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        raise DialError(
            f"TLS handshake with {host}:{port} (server name {server_name!r}) "
            f"failed: {_reason(exc)}"
        ) from exc
    problem = ""
    if settings.pinned_chain_sha256 or settings.pinned_cert_sha256:
        problem = _unpinned(settings, _peer_chain(ssl_stream))
    elif settings.verify_names:
        problem = _not_named(settings.verify_names, _peer_chain(ssl_stream))
    if not problem and settings.pinned_key_sha256:
        problem = _key_unpinned(settings, _peer_chain(ssl_stream, verified=True))
    if problem:
        await trio.aclose_forcefully(ssl_stream)
        raise DialError(f"TLS server {host}:{port}: {problem}")
    return TLSStream(ssl_stream)


def _key_unpinned(settings: TLSSettings, chain: list[bytes]) -> str:
    """What is wrong with the verified chain against the public-key pins
    ("" if a certificate in it has a pinned key), as Xray checked them."""
    if settings.allow_insecure or settings.pinned_cert_sha256:
        return "pinnedPeerCertificatePublicKeySha256 needs a verified chain"
    for certificate in chain:
        try:
            digest = hashlib.sha256(public_key_info(certificate)).digest()
        except ValueError:
            continue
        if _pinned(digest, settings.pinned_key_sha256):
            return ""
    return "no certificate of its chain has a pinned public key"


def _not_named(names: tuple[str, ...], chain: list[bytes]) -> str:
    """What is wrong with the server's certificate against the names it must
    be valid for ("" if it is valid for one)."""
    try:
        leaf = certificate_names(chain[0]) if chain else None
    except ValueError:
        leaf = None
    if leaf is not None and any(is_for(leaf, name) for name in names):
        return ""
    return f"its certificate is for none of {', '.join(names)} (verifyPeerCertByName)"


def _unpinned(settings: TLSSettings, chain: list[bytes]) -> str:
    """What is wrong with the server's chain against the pins ("" if fine)."""
    if settings.pinned_chain_sha256:
        found = chain_hash(chain)
        if not _pinned(found, settings.pinned_chain_sha256):
            return (
                "its certificate chain is not pinned"
                f" (its hash: {base64.b64encode(found).decode()})"
            )
    if settings.pinned_cert_sha256:
        hashes = [hashlib.sha256(certificate).digest() for certificate in chain]
        if not hashes or not _pinned(hashes[0], settings.pinned_cert_sha256):
            if any(_pinned(h, settings.pinned_cert_sha256) for h in hashes[1:]):
                return (
                    "pinnedPeerCertSha256 matches a CA of its chain; vtrio can pin"
                    " only the server's own certificate"
                )
            leaf = hashes[0].hex() if hashes else "none"
            return f"its certificate is not pinned (its SHA-256: {leaf})"
    return ""


def _pinned(found: bytes, pins: tuple[bytes, ...]) -> bool:
    return any(hmac.compare_digest(found, pin) for pin in pins)


def chain_hash(certificates: list[bytes]) -> bytes:
    """v2ray's hash of a chain of DER certificates: the SHA-256 of the first,
    then each next one folded in as SHA-256(hash + SHA-256(certificate))."""
    folded = b""
    for certificate in certificates:
        digest = hashlib.sha256(certificate).digest()
        folded = hashlib.sha256(folded + digest).digest() if folded else digest
    return folded


def _peer_chain(
    ssl_stream: trio.SSLStream[trio.abc.Stream], *, verified: bool = False
) -> list[bytes]:
    """The DER certificates the server sent, leaf first (``verified``: the
    chain OpenSSL built to a trusted root instead). Python 3.13 names the
    calls; before it, the same OpenSSL calls sit on the ssl object inside
    (and give certificate objects rather than bytes)."""
    ssl_object: Any = ssl_stream._ssl_object
    name = "get_verified_chain" if verified else "get_unverified_chain"
    get_chain = getattr(ssl_object, name, None)
    chain = get_chain() if get_chain else getattr(ssl_object._sslobj, name)()
    return [
        item if isinstance(item, bytes) else item.public_bytes(_DER)
        for item in chain or ()
    ]
