"""What each real peer supports, and the interop cases generated from it.

Theory of operation: ``PROFILES`` is the one place that records what a peer
version can and cannot do (spec section 11, research/landscape.md 1e, and
what the binaries did on this machine). ``cases()`` crosses those facts with
vtrio's own abilities and yields one ``Case`` per combination worth proving;
a combination a peer lacks is simply never generated, so no test skips for a
missing feature. Each case renders its own test id, which names the peer and
its version, e.g. ``v2ray-4.34-client->vtrio-server[aes-128-gcm,aead]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

VTRIO = "vtrio"

# Legacy (MD5) request headers are used whenever alterId > 0; 4 is the value
# v2ray's own docs use.
LEGACY_ALTER_ID = 4

TCP_PAYLOAD = 512 * 1024
LARGE_TCP_PAYLOAD = 4 * 1024 * 1024
# A first payload far below sing-box's 100-byte first-read minimum.
TINY_PAYLOAD = 1
# Many connections within one second: distinct auth IDs must not trip the
# replay filter, and streams must not cross.
CONCURRENT_STREAMS = 8

# echo: TCP both ways at once; download: the target sends and closes first,
# so the end of the response direction is checked; udp: datagrams.
Traffic = Literal["echo", "download", "udp"]
Target = Literal["127.0.0.1", "localhost", "::1"]


@dataclass(frozen=True, slots=True)
class PeerProfile:
    """What one peer version does, as a client and as a server.

    Attributes:
        name: the peer ("v2ray" or "sing-box").
        version: the minor version these facts were checked against.
        client_securities: ``security`` strings its client config honours.
        ignored_securities: strings its client config takes but silently maps
            to something else (documented, not generated).
        server_securities: securities a vtrio client may send to its server.
        legacy_header: it sends (alterId > 0) and accepts legacy MD5 headers.
        authenticated_length: it speaks the AuthenticatedLength option (0x10).
        global_padding_option: its client has a switch for GlobalPadding
            (v2ray has none: it always pads gcm/chacha).
        udp_sizes: datagram payload sizes proven through its socks inbound
            (client) or its VMess inbound (server).
        packet_encodings: per-datagram address schemes its client can put
            inside a command-2 tunnel (sing-box ``packet_encoding``).
        notes: limits that shape the table, for docs/interop.md.
    """

    name: str
    version: str
    client_securities: tuple[str, ...]
    ignored_securities: tuple[tuple[str, str], ...]
    server_securities: tuple[str, ...]
    legacy_header: bool
    authenticated_length: bool
    global_padding_option: bool
    udp_client_sizes: tuple[int, ...]
    udp_server_sizes: tuple[int, ...]
    packet_encodings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


# Securities a vtrio client can be configured with (v2ray JSON spelling).
VTRIO_CLIENT_SECURITIES = ("aes-128-gcm", "chacha20-poly1305", "auto", "none", "zero")

UDP_SIZES = (1, 512, 1400, 8000)

# How the response direction ends differs by framing: an empty chunk or a
# close (aes-128-gcm; sing never sends the empty chunk), or only a close
# (sing's unframed `none`). A download case per framing proves both.
END_SECURITIES = ("aes-128-gcm", "none")

# UDP keeps ChunkStream for `zero` (spec 6.7), so each is its own framing.
UDP_SECURITIES = ("aes-128-gcm", "none", "zero")

PROFILES: dict[str, PeerProfile] = {
    "v2ray": PeerProfile(
        name="v2ray",
        version="4.34",
        client_securities=("aes-128-gcm", "chacha20-poly1305", "auto", "none"),
        # `zero` arrived in 4.35; 4.34 reads it (and aes-128-cfb) as auto.
        ignored_securities=(("zero", "auto"), ("aes-128-cfb", "auto")),
        server_securities=VTRIO_CLIENT_SECURITIES,
        legacy_header=True,
        authenticated_length=False,
        global_padding_option=False,
        # v2ray moves a datagram in one 2 KiB buffer and drops what does not
        # fit (spec 6.9): with GlobalPadding (0-63 random bytes) 1966 bytes
        # always fit. Measured over 40 rounds each way, against vtrio and
        # sing-box: 1966 always arrives, 1990 is lost now and then.
        udp_client_sizes=(1, 512, 1400, 1966),
        udp_server_sizes=(1, 512, 1400, 1966),
        notes=(
            "no AuthenticatedLength (added in 4.41), no NoTerminationSignal",
            "`zero` and `aes-128-cfb` in a client config silently become auto",
            "accepts legacy headers by default (AEAD forcing came in 4.35)",
            "UDP payloads above 1966 bytes may be dropped by v2ray (random padding)",
        ),
    ),
    "sing-box": PeerProfile(
        name="sing-box",
        version="1.14",
        client_securities=(
            "aes-128-gcm",
            "chacha20-poly1305",
            "auto",
            "none",
            "zero",
            "aes-128-cfb",
        ),
        ignored_securities=(),
        server_securities=VTRIO_CLIENT_SECURITIES,
        legacy_header=True,
        authenticated_length=True,
        global_padding_option=True,
        udp_client_sizes=UDP_SIZES,
        udp_server_sizes=UDP_SIZES,
        packet_encodings=("packetaddr",),
        notes=(
            "never drains on a failed handshake (closes at once)",
            "never sends the end-of-stream chunk; understands it on receipt",
            "`none`/`zero` over TCP send Opt 0: an unframed body",
            "its server needs header and first payload in one read (100 B)",
        ),
    ),
    "xray": PeerProfile(
        name="xray",
        version="26.10",
        # Xray maps every other string (none, zero, aes-128-cfb) to auto.
        client_securities=("aes-128-gcm", "chacha20-poly1305", "auto"),
        ignored_securities=(("none", "auto"), ("zero", "auto")),
        server_securities=("aes-128-gcm", "chacha20-poly1305", "auto"),
        legacy_header=False,
        authenticated_length=True,
        global_padding_option=False,
        udp_client_sizes=(1, 512, 1400, 1966),
        udp_server_sizes=(1, 512, 1400, 1966),
        notes=(
            "AEAD headers only (the legacy MD5 header was removed in 1.8.3)",
            "no `none` or `zero` body: a client config maps them to auto",
            "its freedom refuses private addresses to a VMess inbound's traffic"
            " unless `finalRules` allow them (the harness allows loopback)",
            "ignores SIGTERM inside the Python binding's process: killed",
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class Case:
    """One proven combination: who dials whom, with which options."""

    client: str
    server: str
    security: str
    legacy: bool = False
    global_padding: bool = False
    authenticated_length: bool = False
    traffic: Traffic = "echo"
    target: Target = "127.0.0.1"
    # Run vtrio as `python -m vtrio serve config.json` instead of in-process.
    vtrio_process: bool = False
    # VTRIO_CRYPTO_BACKEND for that process ("pycryptodome": no OpenSSL AEADs).
    crypto_backend: str = ""
    # Run the vtrio client as `python -m vtrio client vmess://...`.
    share_link: bool = False
    payload: int = TCP_PAYLOAD
    # Concurrent TCP connections (echo traffic only), each its own VMess one.
    streams: int = 1
    udp_sizes: tuple[int, ...] = ()
    # sing-box's per-datagram addressing inside a UDP tunnel ("packetaddr").
    packet_encoding: str = ""

    @property
    def alter_id(self) -> int:
        return LEGACY_ALTER_ID if self.legacy else 0

    @property
    def peer(self) -> str:
        """The real peer of a vtrio case (the client of a peer-only chain)."""
        return self.server if self.client == VTRIO else self.client

    def __str__(self) -> str:
        options = [self.security, "legacy" if self.legacy else "aead"]
        if self.global_padding:
            options.append("padding")
        if self.authenticated_length:
            options.append("authlen")
        if self.traffic != "echo":
            options.append(self.traffic)
        if self.packet_encoding:
            options.append(self.packet_encoding)
        if self.target != "127.0.0.1":
            options.append(self.target)
        if self.streams > 1:
            options.append(f"{self.streams}-streams")
        if self.payload != TCP_PAYLOAD:
            options.append(_size_label(self.payload))
        if self.vtrio_process:
            options.append("subprocess")
        if self.crypto_backend:
            options.append(self.crypto_backend)
        if self.share_link:
            options.append("vmess-link")
        pair = f"{_label(self.client)}-client->{_label(self.server)}-server"
        return f"{pair}[{','.join(options)}]"


def _size_label(size: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def _label(name: str) -> str:
    return VTRIO if name == VTRIO else PROFILES[name].label


def _headers(profile: PeerProfile) -> tuple[bool, ...]:
    return (False, True) if profile.legacy_header else (False,)


def _udp_cases(
    client: str,
    server: str,
    securities: Sequence[str],
    sizes: tuple[int, ...],
    *,
    legacy: bool,
) -> list[Case]:
    """UDP per framing (AEAD chunks, `none` chunks, `zero`), plus one legacy."""
    cases = [
        Case(client, server, security, traffic="udp", udp_sizes=sizes)
        for security in securities
    ]
    if legacy:
        cases.append(
            Case(
                client,
                server,
                "aes-128-gcm",
                legacy=True,
                traffic="udp",
                udp_sizes=sizes,
            )
        )
    return cases


def _pycryptodome_cases(client: str, server: str) -> list[Case]:
    """vtrio without the `fast` extra: pycryptodome's C functions called
    directly (ciphers._CounterGCM, ciphers._RawChaCha20Poly1305), both ways
    of the body, against the peer's own chunk sizes."""
    return [
        Case(
            client,
            server,
            security,
            traffic=traffic,
            vtrio_process=True,
            crypto_backend="pycryptodome",
        )
        for security in ("aes-128-gcm", "chacha20-poly1305")
        for traffic in ("echo", "download")
    ]


def peer_client_cases(profile: PeerProfile) -> list[Case]:
    """A real client of ``profile`` against a vtrio server."""
    name = profile.name
    cases = [
        Case(name, VTRIO, security, legacy=legacy)
        for security in profile.client_securities
        for legacy in _headers(profile)
    ]
    for security in ("aes-128-gcm", "chacha20-poly1305"):
        if profile.global_padding_option:
            cases.append(Case(name, VTRIO, security, global_padding=True))
        if profile.authenticated_length:
            cases.append(Case(name, VTRIO, security, authenticated_length=True))
        if profile.global_padding_option and profile.authenticated_length:
            cases.append(
                Case(
                    name,
                    VTRIO,
                    security,
                    global_padding=True,
                    authenticated_length=True,
                )
            )
    ends = [s for s in END_SECURITIES if s in profile.client_securities]
    cases += [
        Case(name, VTRIO, "aes-128-gcm", payload=LARGE_TCP_PAYLOAD),
        Case(name, VTRIO, "aes-128-gcm", streams=CONCURRENT_STREAMS),
        *[Case(name, VTRIO, sec, payload=TINY_PAYLOAD) for sec in ends],
        Case(name, VTRIO, "aes-128-gcm", target="localhost"),
        Case(name, VTRIO, "aes-128-gcm", target="::1"),
        Case(name, VTRIO, "aes-128-gcm", vtrio_process=True),
    ]
    cases += [Case(name, VTRIO, security, traffic="download") for security in ends]
    cases += _pycryptodome_cases(name, VTRIO)
    securities = [s for s in UDP_SECURITIES if s in profile.client_securities]
    cases += _udp_cases(
        name, VTRIO, securities, profile.udp_client_sizes, legacy=profile.legacy_header
    )
    cases += [
        Case(
            name,
            VTRIO,
            "aes-128-gcm",
            traffic="udp",
            udp_sizes=profile.udp_client_sizes,
            packet_encoding=encoding,
        )
        for encoding in profile.packet_encodings
    ]
    return cases


def vtrio_client_cases(profile: PeerProfile) -> list[Case]:
    """A vtrio client against a real server of ``profile``."""
    name = profile.name
    cases = [
        Case(VTRIO, name, security, legacy=legacy)
        for security in profile.server_securities
        for legacy in _headers(profile)
    ]
    if profile.authenticated_length:
        cases += [
            Case(VTRIO, name, security, authenticated_length=True)
            for security in ("aes-128-gcm", "chacha20-poly1305")
        ]
    ends = [s for s in END_SECURITIES if s in profile.server_securities]
    cases += [
        Case(VTRIO, name, "aes-128-gcm", payload=LARGE_TCP_PAYLOAD),
        Case(VTRIO, name, "aes-128-gcm", streams=CONCURRENT_STREAMS),
        *[Case(VTRIO, name, sec, payload=TINY_PAYLOAD) for sec in ends],
        Case(VTRIO, name, "aes-128-gcm", target="localhost"),
        Case(VTRIO, name, "aes-128-gcm", target="::1"),
        Case(VTRIO, name, "aes-128-gcm", vtrio_process=True),
        Case(
            VTRIO,
            name,
            "chacha20-poly1305",
            legacy=profile.legacy_header,
            share_link=True,
        ),
    ]
    cases += [Case(VTRIO, name, security, traffic="download") for security in ends]
    cases += _pycryptodome_cases(VTRIO, name)
    cases += _udp_cases(
        VTRIO,
        name,
        [s for s in UDP_SECURITIES if s in profile.server_securities],
        profile.udp_server_sizes,
        legacy=profile.legacy_header,
    )
    return cases


def peer_chain_cases() -> list[Case]:
    """Peer client -> other peer's server: proves the harness without vtrio."""
    cases = []
    for client, server in (("v2ray", "sing-box"), ("sing-box", "v2ray")):
        client_profile, server_profile = PROFILES[client], PROFILES[server]
        legacy_options = (False, True) if server_profile.legacy_header else (False,)
        cases += [
            Case(client, server, security, legacy=legacy)
            for security in client_profile.client_securities
            for legacy in legacy_options
        ]
        udp_sizes = tuple(
            size
            for size in client_profile.udp_client_sizes
            if size in server_profile.udp_server_sizes
        )
        cases.append(
            Case(client, server, "aes-128-gcm", traffic="udp", udp_sizes=udp_sizes)
        )
        cases += [
            Case(client, server, security, traffic="download")
            for security in END_SECURITIES
        ]
    return cases


def vtrio_cases() -> list[Case]:
    """Every case with vtrio on one side, peer by peer."""
    cases: list[Case] = []
    for profile in PROFILES.values():
        cases += peer_client_cases(profile)
        cases += vtrio_client_cases(profile)
    return cases
