"""VMess connections as sans-IO state machines: ServerConnection, ClientConnection.

Theory of operation (h11's surface): ``receive_data(data)`` only buffers, and
``b""`` means the transport reached EOF. ``next_event()`` parses as far as the
buffer allows and returns one event or :data:`NEED_DATA`. The ``send_*``
methods return the bytes to write, in order, and never block.

Each side has two independent halves. The receive half walks
HEADER -> BODY -> CLOSED (or REJECTED on the server, BROKEN after a peer
error); the send half walks IDLE -> OPEN -> CLOSED. The client sends its
header in ``start()`` together with the first payload and never waits for the
response header (spec 5.4); the server writes nothing until its runtime asks
for the response header, which must travel with the first response data.

A server handshake failure is an event, not an exception: ``Rejected(drain)``
tells the runtime to read and drop ``drain`` more bytes, then close (spec 9.1,
9.2). Which failures drain follows v2ray: an unknown or replayed auth ID, a
bad AEAD header tag, and (legacy only) a bad checksum or replayed session.
Everything after the handshake that goes wrong raises RemoteProtocolError.
"""

from __future__ import annotations

import abc
import enum
import functools
from typing import TYPE_CHECKING

from vtrio.config.model import Security, VMessUser
from vtrio.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from vtrio.protocol.auth_id import AUTH_ID_LENGTH, auth_id_cipher, make_auth_id
from vtrio.protocol.body import END, ChunkDecoder, ChunkEncoder, Framing
from vtrio.protocol.ciphers import StreamCipher, aes_128_cfb
from vtrio.protocol.events import (
    NEED_DATA,
    Data,
    Datagram,
    EndOfStream,
    Event,
    NeedData,
    Rejected,
    RequestHeader,
    ResponseHeader,
)
from vtrio.protocol.header import (
    AEAD_REQUEST_PREFIX,
    RESPONSE_FIXED_LENGTH,
    SEALED_LENGTH_FIELD,
    TAG_LENGTH,
    AeadRequestSealer,
    AeadResponseSealer,
    decode_response_command,
    encode_response,
    legacy_request_cipher,
    response_key_iv,
    seal_legacy_request,
)
from vtrio.protocol.ids import alter_ids, auto_security, cmd_key
from vtrio.protocol.instruction import (
    FIXED_LENGTH,
    MAX_LENGTH,
    MAX_PADDING,
    Command,
    Instruction,
    Option,
    Request,
    SecurityType,
    decode_instruction,
    required_length,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.protocol.commands import SwitchAccount
    from vtrio.protocol.legacy import LegacyHit
    from vtrio.protocol.validator import UserRecord, UserValidator

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "ReceiveState",
    "Request",
    "SendState",
    "ServerConnection",
]

NO_TERMINATION_SIGNAL = "NoTerminationSignal"
AUTHENTICATED_LENGTH = "AuthenticatedLength"
# Legacy clients put their clock off by U in -30..29 s (spec 2.1).
LEGACY_JITTER = 30
# The smallest instruction: 38 fixed bytes and the FNV (Mux, no padding).
MIN_INSTRUCTION = FIXED_LENGTH + 4
# A response header is 4 bytes plus at most 255 bytes of command (spec 5.2).
MAX_RESPONSE_HEADER = RESPONSE_FIXED_LENGTH + 255


class ReceiveState(enum.Enum):
    """Where the receive half of a connection is."""

    HEADER = enum.auto()  # waiting for the peer's request / response header
    BODY = enum.auto()  # decoding chunks
    CLOSED = enum.auto()  # EndOfStream was returned
    REJECTED = enum.auto()  # server: Rejected was returned; drain, then close
    BROKEN = enum.auto()  # the peer sent invalid bytes; nothing more is parsed


class SendState(enum.Enum):
    """Where the send half of a connection is."""

    IDLE = enum.auto()  # client before start(), server before send_response()
    OPEN = enum.auto()
    CLOSED = enum.auto()  # send_eof() was called


class _Connection(abc.ABC):
    """What both sides share: the receive buffer, the body halves, the states."""

    def __init__(self, random: Callable[[int], bytes]) -> None:
        self._random = random
        self._receive_state = ReceiveState.HEADER
        self._send_state = SendState.IDLE
        self._buffer = bytearray()  # header bytes; the body decoder owns the rest
        self._eof = False
        self._received = 0
        self._command = Command.TCP
        self._encoder: ChunkEncoder | None = None
        self._decoder: ChunkDecoder | None = None
        self._no_termination_signal = False

    @property
    def receive_state(self) -> ReceiveState:
        """Where the receive half is."""
        return self._receive_state

    @property
    def send_state(self) -> SendState:
        """Where the send half is."""
        return self._send_state

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the transport; ``b""`` means EOF.

        Memory stays bounded when the caller alternates as h11's users do
        (receive only after NEED_DATA): what is kept is at most one header or
        one chunk plus one read. After a rejection or a failure the bytes are
        only counted.

        Raises:
            LocalProtocolError: data after EOF.
        """
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        self._received += len(data)
        if self._receive_state in (ReceiveState.REJECTED, ReceiveState.BROKEN):
            pass  # counted for the drain, never parsed or kept
        elif self._decoder is not None:
            self._decoder.feed(data)
        elif data:
            self._buffer += data
        if not data:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA.

        After EndOfStream the same event is returned again; after Rejected,
        the same Rejected.

        Raises:
            RemoteProtocolError: the peer sent invalid bytes (the connection is
                then BROKEN and raises LocalProtocolError on further calls).
        """
        if self._receive_state is ReceiveState.BROKEN:
            raise LocalProtocolError("the connection already failed")
        try:
            if self._receive_state in (ReceiveState.HEADER, ReceiveState.REJECTED):
                return self._next_header_event()
            if self._receive_state is ReceiveState.CLOSED:
                return EndOfStream()
            return self._next_body_event()
        except RemoteProtocolError:
            self._receive_state = ReceiveState.BROKEN
            raise

    def send_data(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Stream data (TCP or Mux) as chunks of at most body.MAX_CHUNK_PAYLOAD bytes.

        Raises:
            LocalProtocolError: not open for sending, or a UDP connection.
        """
        if self._command is Command.UDP:
            raise LocalProtocolError("use send_datagram on a UDP connection")
        return self._open_encoder().encode_stream(data)

    def send_datagram(
        self, payload: bytes | bytearray | memoryview
    ) -> bytes | bytearray:
        """One UDP datagram as one chunk.

        Raises:
            LocalProtocolError: not open, not UDP, empty or over body.MAX_DATAGRAM.
        """
        if self._command is not Command.UDP:
            raise LocalProtocolError("send_datagram needs a UDP (Cmd 2) connection")
        return self._open_encoder().encode_datagram(payload)

    def send_eof(self) -> bytes | bytearray:
        """End our direction: the empty chunk, or b"" under NoTerminationSignal
        or without ChunkStream (then only closing the transport ends it).

        Raises:
            LocalProtocolError: not open for sending.
        """
        encoder = self._open_encoder()
        self._send_state = SendState.CLOSED
        return b"" if self._no_termination_signal else encoder.encode_end()

    def _open_encoder(self) -> ChunkEncoder:
        if self._send_state is not SendState.OPEN or self._encoder is None:
            raise LocalProtocolError(f"cannot send in state {self._send_state.name}")
        return self._encoder

    def _start_body(self, decoder: ChunkDecoder) -> None:
        """Hand the bytes after the header to the body decoder."""
        self._decoder = decoder
        self._receive_state = ReceiveState.BODY
        if self._buffer:
            decoder.feed(self._buffer)
        if self._eof:
            decoder.feed(b"")
        self._buffer = bytearray()

    def _next_body_event(self) -> Event | NeedData:
        assert self._decoder is not None  # set together with the BODY state
        datagram = self._command is Command.UDP
        # A stream's chunks carry no boundaries: one Data for all that arrived.
        payload = self._decoder.next_payload(coalesce=not datagram)
        if payload is None:
            return NEED_DATA
        if payload is END:
            self._receive_state = ReceiveState.CLOSED
            return EndOfStream()
        return Datagram(payload) if datagram else Data(payload)

    @abc.abstractmethod
    def prepare_response(self) -> None:
        """Do the response's key work ahead of need, while the driver waits."""

    @abc.abstractmethod
    def _next_header_event(self) -> Event | NeedData:
        """Parse the peer's header: the request (server) or response (client)."""


def _security_of(nibble: int) -> SecurityType | None:
    # v2ray reads 0 (UNKNOWN) as legacy; 2 (AUTO) and 6 (ZERO) are not wire values.
    if nibble == 0:
        return SecurityType.LEGACY
    try:
        return SecurityType(nibble)
    except ValueError:
        return None


class ServerConnection(_Connection):
    """The server side of one VMess connection."""

    def __init__(
        self,
        validator: UserValidator,
        *,
        now: int,
        random: Callable[[int], bytes],
        disable_insecure_encryption: bool = False,
        aead_forced: bool = False,
    ) -> None:
        """Args:
        validator: the inbound's users, auth-ID table, legacy table and
            replay filters (shared by every connection of the inbound).
        now: Unix seconds when the connection was accepted.
        random: a source of random bytes (``os.urandom`` at run time).
        disable_insecure_encryption: refuse securities none and aes-128-cfb.
        aead_forced: refuse legacy (MD5) headers even for alterId > 0 users.
        """
        super().__init__(random)
        self._validator = validator
        self._now = now
        self._disable_insecure_encryption = disable_insecure_encryption
        self._aead_forced = aead_forced
        self._record: UserRecord | None = None
        self._sealer: AeadRequestSealer | None = None  # AEAD header in progress
        self._instruction_length: int | None = None
        self._legacy_hit: LegacyHit | None = None  # legacy header in progress
        self._legacy_cipher: StreamCipher | None = None
        self._legacy_plain = bytearray()
        self._rejected: Rejected | None = None
        self._request: RequestHeader | None = None
        self._instruction: Instruction | None = None
        self._framing: Framing | None = None
        # Made by prepare_response: the header's AEAD pair, or its CFB stream.
        self._response_header_cipher: AeadResponseSealer | StreamCipher | None = None

    @property
    def request(self) -> RequestHeader | None:
        """The accepted request, once RequestHeader was returned."""
        return self._request

    def prepare_response(self) -> None:
        """Derive the response's keys, header ciphers and body encoder now.

        :meth:`send_response` does this itself when it was not called; a
        driver calls it while it waits for the target, so the work is done
        before the target's first bytes arrive rather than after. No effect
        before a request was accepted or once the response went out.
        """
        instruction, framing = self._instruction, self._framing
        if (
            self._encoder is not None
            or instruction is None
            or framing is None
            or self._send_state is not SendState.IDLE
        ):
            return
        legacy = self._legacy_hit is not None
        key, iv = response_key_iv(instruction.key, instruction.iv, legacy=legacy)
        stream_cipher: StreamCipher | None = None
        if legacy:
            # The legacy header's CFB stream carries on into a legacy body.
            self._response_header_cipher = aes_128_cfb(key, iv)
            if framing.security is SecurityType.LEGACY:
                stream_cipher = self._response_header_cipher
        else:
            self._response_header_cipher = AeadResponseSealer(key, iv)
        self._encoder = ChunkEncoder(
            framing,
            key=key,
            iv=iv,
            request_key=instruction.key,
            request_iv=instruction.iv,
            random=self._random,
            stream_cipher=stream_cipher,
        )

    def send_response(self, command: SwitchAccount | None = None) -> bytes:
        """The response header; send it with the first response data (spec 5.4).

        Raises:
            LocalProtocolError: no accepted request yet, or sent twice.
        """
        if self._send_state is not SendState.IDLE or self._instruction is None:
            raise LocalProtocolError("send_response needs an accepted request, once")
        self.prepare_response()
        plain = encode_response(self._instruction.response_auth, command)
        cipher, self._response_header_cipher = self._response_header_cipher, None
        if isinstance(cipher, StreamCipher):
            header = cipher.encrypt(plain)
        else:
            assert cipher is not None  # made by prepare_response
            header = cipher.seal(plain)
        self._send_state = SendState.OPEN
        return header

    # --- header parsing -----------------------------------------------------

    def _next_header_event(self) -> Event | NeedData:
        if self._rejected is not None:
            return self._rejected
        if self._record is None:
            if len(self._buffer) < AUTH_ID_LENGTH:
                return (
                    self._reject(False, "EOF in the auth ID")
                    if self._eof
                    else NEED_DATA
                )
            failure = self._authenticate(bytes(self._buffer[:AUTH_ID_LENGTH]))
            if failure is not None:
                return failure
        if self._legacy_hit is not None:
            return self._next_legacy_event()
        return self._next_aead_event()

    def _authenticate(self, auth: bytes) -> Rejected | None:
        """Find the user by AEAD auth ID, else in the legacy table (spec 3.5)."""
        try:
            self._record = self._validator.match_auth_id(auth, self._now)
        except AuthenticationError as aead_failure:
            legacy = self._validator.match_legacy(auth, self._now)
            if legacy is None:
                return self._reject(True, str(aead_failure))
            if self._aead_forced:
                return self._reject(True, "legacy header refused in AEAD-only mode")
            self._record, self._legacy_hit = legacy
            self._legacy_cipher = legacy_request_cipher(
                self._record.cmd_key, self._legacy_hit.timestamp
            )
        return None

    def _next_aead_event(self) -> Event | NeedData:
        assert self._record is not None
        buffer = self._buffer
        if self._instruction_length is None:
            if len(buffer) < AEAD_REQUEST_PREFIX:
                return (
                    self._reject(False, "EOF in the AEAD header")
                    if self._eof
                    else NEED_DATA
                )
            self._sealer = AeadRequestSealer(
                self._record.cmd_key,
                bytes(buffer[:AUTH_ID_LENGTH]),
                bytes(
                    buffer[AUTH_ID_LENGTH + SEALED_LENGTH_FIELD : AEAD_REQUEST_PREFIX]
                ),
            )
            try:
                length = self._sealer.open_length(
                    bytes(buffer[AUTH_ID_LENGTH : AUTH_ID_LENGTH + SEALED_LENGTH_FIELD])
                )
            except RemoteProtocolError:
                return self._reject(True, "bad tag on the header length")
            if not MIN_INSTRUCTION <= length <= MAX_LENGTH:
                return self._reject(True, f"header length {length} out of range")
            self._instruction_length = length
        assert self._sealer is not None
        end = AEAD_REQUEST_PREFIX + self._instruction_length + TAG_LENGTH
        if len(buffer) < end:
            return (
                self._reject(False, "EOF in the AEAD header")
                if self._eof
                else NEED_DATA
            )
        try:
            plain = self._sealer.open(bytes(buffer[AEAD_REQUEST_PREFIX:end]))
        except RemoteProtocolError:
            return self._reject(True, "bad tag on the header")
        del buffer[:end]
        self._sealer = None  # an idle tunnel should not keep header ciphers
        try:
            instruction = decode_instruction(plain)
        except RemoteProtocolError as exc:
            # AEAD mode closes without a drain on a bad checksum or address.
            return self._reject(False, str(exc))
        return self._accept(instruction)

    def _next_legacy_event(self) -> Event | NeedData:
        assert self._legacy_cipher is not None
        assert self._legacy_hit is not None
        plain = self._legacy_plain
        cipher_offset = AUTH_ID_LENGTH + len(plain)
        while True:
            try:
                needed = required_length(bytes(plain))
            except RemoteProtocolError as exc:
                # v2ray would read the FNV from the wrong offset: taint + drain.
                return self._taint(True, str(exc))
            if len(plain) >= needed:
                break
            available = len(self._buffer) - cipher_offset
            if available <= 0:
                if self._eof:
                    return self._taint(
                        len(plain) >= FIXED_LENGTH, "EOF in the legacy header"
                    )
                return NEED_DATA
            take = min(available, needed - len(plain))
            plain += self._legacy_cipher.decrypt(
                bytes(self._buffer[cipher_offset : cipher_offset + take])
            )
            cipher_offset += take
        del self._buffer[:cipher_offset]
        self._legacy_cipher, self._legacy_plain = None, bytearray()
        try:
            instruction = decode_instruction(bytes(plain))
        except RemoteProtocolError as exc:
            if "checksum" in str(exc):
                return self._taint(True, str(exc))
            return self._reject(False, str(exc))
        return self._accept(instruction)

    def _accept(self, instruction: Instruction) -> Event:
        """Checks after a well-formed instruction; then the body starts."""
        assert self._record is not None
        legacy = self._legacy_hit is not None
        if not self._validator.record_session(
            self._record.user.id, instruction.key, instruction.iv, self._now
        ):
            if legacy:
                return self._taint(True, "replayed session (legacy)")
            return self._reject(False, "replayed session")
        security = _security_of(instruction.security)
        if security is None:
            return self._reject(False, f"unsupported security {instruction.security}")
        if self._disable_insecure_encryption and security in (
            SecurityType.LEGACY,
            SecurityType.NONE,
        ):
            return self._reject(False, f"insecure encryption refused ({security.name})")
        command = instruction.request.command
        try:
            framing = Framing.of(
                security, instruction.options, datagram=command is Command.UDP
            )
        except RemoteProtocolError as exc:
            return self._reject(False, str(exc))
        self._instruction, self._framing, self._command = instruction, framing, command
        self._no_termination_signal = (
            NO_TERMINATION_SIGNAL in self._record.user.experiments
        )
        self._start_body(
            ChunkDecoder(
                framing,
                key=instruction.key,
                iv=instruction.iv,
                request_key=instruction.key,
                request_iv=instruction.iv,
            )
        )
        self._request = RequestHeader(
            user=self._record.user,
            command=command,
            address=instruction.request.address,
            port=instruction.request.port,
            security=security,
            options=instruction.options,
            legacy=legacy,
        )
        return self._request

    def _taint(self, drain: bool, reason: str) -> Rejected:
        """A legacy failure once the user is known burns its table entry (2.4)."""
        assert self._legacy_hit is not None
        self._legacy_hit.burnt = True
        return self._reject(drain, reason)

    def _reject(self, drain: bool, reason: str) -> Rejected:
        """Refuse the handshake; a drain counts the bytes already read (spec 9.1)."""
        remaining = 0
        if drain:
            remaining = max(
                0, self._validator.drain_size(self._random) - self._received
            )
        self._rejected = Rejected(remaining, reason)
        self._receive_state = ReceiveState.REJECTED
        self._buffer.clear()
        return self._rejected


class ClientConnection(_Connection):
    """The client side of one VMess connection."""

    def __init__(
        self,
        account: VMessUser,
        request: Request,
        *,
        now: int,
        random: Callable[[int], bytes],
        machine: str,
    ) -> None:
        """Args:
        account: the outbound user (id, alter_id, security, experiments).
        request: command and destination.
        now: Unix seconds, for the auth ID or the legacy timestamp.
        random: a source of random bytes (keys, nonces, padding, jitter).
        machine: ``platform.machine()``, to resolve security ``auto``.
        """
        super().__init__(random)
        self._account = account
        self._request = request
        self._now = now
        self._command = request.command
        self._security, self._options = client_security(
            account, request.command, machine=machine
        )
        self._framing = Framing.of(
            self._security, self._options, datagram=request.command is Command.UDP
        )
        self._no_termination_signal = NO_TERMINATION_SIGNAL in account.experiments
        self._instruction: Instruction | None = None
        self._legacy = account.alter_id > 0
        self._response_key = b""
        self._response_iv = b""
        self._response_sealer: AeadResponseSealer | None = None
        self._response_cipher: StreamCipher | None = None
        self._response_length: int | None = None
        self._response_decoder: ChunkDecoder | None = None  # prepare_response
        self._header: bytes | None = None  # sealed ahead of start()

    @property
    def security(self) -> SecurityType:
        """The security this connection uses (``auto`` resolved)."""
        return self._security

    def seal_header(self) -> None:
        """Seal the request header now, before the first payload is known.

        The header does not depend on the payload, so a client that waits
        for its first payload (to send both in one write) can do this work
        during the wait; :meth:`start` seals it when this was not called.

        Raises:
            LocalProtocolError: after :meth:`start`.
        """
        if self._send_state is not SendState.IDLE:
            raise LocalProtocolError("start() was already called")
        if self._header is not None:
            return
        random = self._random
        padding = random(random(1)[0] % (MAX_PADDING + 1))
        instruction = Instruction(
            iv=random(16),
            key=random(16),
            response_auth=random(1)[0],
            options=self._options,
            security=int(self._security),
            request=self._request,
            padding=padding,
        )
        self._instruction = instruction
        plain = instruction.encode()
        primary_key = cmd_key(self._account.id)
        if self._legacy:
            self._header = self._legacy_header(primary_key, plain)
        else:
            auth_id = make_auth_id(auth_id_cipher(primary_key), self._now, random)
            self._header = AeadRequestSealer(primary_key, auth_id, random(8)).seal(
                plain
            )
        self._response_key, self._response_iv = response_key_iv(
            instruction.key, instruction.iv, legacy=self._legacy
        )
        self._encoder = ChunkEncoder(
            self._framing,
            key=instruction.key,
            iv=instruction.iv,
            request_key=instruction.key,
            request_iv=instruction.iv,
            random=random,
        )

    def start(self, first_payload: bytes | bytearray | memoryview = b"") -> bytes:
        """The request header and, if given, the first payload, in one buffer.

        For UDP a non-empty ``first_payload`` is the first datagram. Write it
        in one send: sing-box wants at least 100 bytes in its first read.

        Raises:
            LocalProtocolError: called twice.
        """
        self.seal_header()
        header, self._header = self._header, None
        assert header is not None
        assert self._encoder is not None
        self._send_state = SendState.OPEN
        if not first_payload:
            return header
        if self._command is Command.UDP:
            return header + self._encoder.encode_datagram(first_payload)
        return header + self._encoder.encode_stream(first_payload)

    def _legacy_header(self, primary_key: bytes, plain: bytes) -> bytes:
        # Like v2ray: a random alter ID keys the HMAC, the clock is jittered.
        random = self._random
        ids = alter_ids(self._account.id, self._account.alter_id)
        hmac_id = ids[int.from_bytes(random(2)) % len(ids)]
        timestamp = self._now + random(1)[0] % (2 * LEGACY_JITTER) - LEGACY_JITTER
        return seal_legacy_request(hmac_id, primary_key, timestamp, plain)

    def prepare_response(self) -> None:
        """Key the response header's AEAD and the body decoder now.

        Reading the response does this itself when it was not called; a
        driver calls it while it waits for the server's answer, so the work
        is done before the answer arrives. No effect before the header was
        sealed, once the response was read, or where the response's CFB
        stream is only known from the header itself (legacy).
        """
        if (
            self._instruction is None
            or self._receive_state is not ReceiveState.HEADER
            or self._response_decoder is not None
        ):
            return
        if not self._legacy and self._response_sealer is None:
            self._response_sealer = AeadResponseSealer(
                self._response_key, self._response_iv
            )
        if self._security is not SecurityType.LEGACY:
            self._response_decoder = self._response_body_decoder(None)

    def _next_header_event(self) -> Event | NeedData:
        if self._instruction is None:
            raise LocalProtocolError("call start() before reading the response")
        self.prepare_response()
        header = (
            self._read_legacy_response() if self._legacy else self._read_aead_response()
        )
        if header is None:
            if self._eof:
                raise RemoteProtocolError("EOF before the response header")
            return NEED_DATA
        if header[0] != self._instruction.response_auth:
            raise RemoteProtocolError("response header does not match the request (V)")
        command = decode_response_command(header[:RESPONSE_FIXED_LENGTH], header[4:])
        self._start_body(
            self._response_decoder or self._response_body_decoder(self._response_cipher)
        )
        return ResponseHeader(command)

    def _response_body_decoder(
        self, stream_cipher: StreamCipher | None
    ) -> ChunkDecoder:
        """The response body's decoder; a legacy body continues the CFB
        stream of the legacy response header."""
        assert self._instruction is not None  # the header was sealed
        return ChunkDecoder(
            self._framing,
            key=self._response_key,
            iv=self._response_iv,
            request_key=self._instruction.key,
            request_iv=self._instruction.iv,
            stream_cipher=stream_cipher,
        )

    def _read_aead_response(self) -> bytes | None:
        buffer = self._buffer
        assert self._response_sealer is not None  # made by prepare_response
        if self._response_length is None:
            if len(buffer) < SEALED_LENGTH_FIELD:
                return None
            length = self._response_sealer.open_length(
                bytes(buffer[:SEALED_LENGTH_FIELD])
            )
            if not RESPONSE_FIXED_LENGTH <= length <= MAX_RESPONSE_HEADER:
                raise RemoteProtocolError(
                    f"response header length {length} out of range"
                )
            self._response_length = length
        end = SEALED_LENGTH_FIELD + self._response_length + TAG_LENGTH
        if len(buffer) < end:
            return None
        header = self._response_sealer.open(bytes(buffer[SEALED_LENGTH_FIELD:end]))
        self._response_sealer = None  # not kept by an idle tunnel
        if len(header) < RESPONSE_FIXED_LENGTH + header[3]:
            raise RemoteProtocolError("response command runs past the header")
        del buffer[:end]
        return header[: RESPONSE_FIXED_LENGTH + header[3]]

    def _read_legacy_response(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < RESPONSE_FIXED_LENGTH:
            return None
        # Decrypt the fixed part to learn CmdLen; the CFB stream is only
        # advanced once the whole header is there, so retries are safe.
        probe = aes_128_cfb(self._response_key, self._response_iv)
        end = (
            RESPONSE_FIXED_LENGTH
            + probe.decrypt(bytes(buffer[:RESPONSE_FIXED_LENGTH]))[3]
        )
        if len(buffer) < end:
            return None
        cipher = aes_128_cfb(self._response_key, self._response_iv)
        header = cipher.decrypt(bytes(buffer[:end]))
        self._response_cipher = cipher
        del buffer[:end]
        return header


@functools.lru_cache(maxsize=256)  # one per (outbound user, command) in use
def client_security(
    account: VMessUser, command: Command, *, machine: str
) -> tuple[SecurityType, Option]:
    """The wire security and options a client sends (spec 4.2, 4.3, 12.1).

    ``zero`` is none without ChunkStream, except for UDP, which keeps
    ChunkStream so datagram boundaries survive (as sing does).
    """
    chosen = account.security
    if chosen is Security.AUTO:
        security = auto_security(machine)
    else:
        security = {
            Security.AES_128_GCM: SecurityType.AES_128_GCM,
            Security.CHACHA20_POLY1305: SecurityType.CHACHA20_POLY1305,
            Security.NONE: SecurityType.NONE,
            Security.ZERO: SecurityType.NONE,
            Security.AES_128_CFB: SecurityType.LEGACY,
        }[chosen]
    if chosen is Security.ZERO:
        return security, Option.CHUNK_STREAM if command is Command.UDP else Option(0)
    options = Option.CHUNK_STREAM
    if security is not SecurityType.LEGACY:
        options |= Option.CHUNK_MASKING
    if security in (SecurityType.AES_128_GCM, SecurityType.CHACHA20_POLY1305):
        options |= Option.GLOBAL_PADDING
        if AUTHENTICATED_LENGTH in account.experiments:
            options |= Option.AUTHENTICATED_LENGTH
    return security, options
