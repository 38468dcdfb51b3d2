"""The whole exception tree of vtrio.

Every failure that crosses a layer boundary is one of these, so the CLI and the
per-connection error boundary can turn it into an exit code or a log line
instead of a traceback.
"""

from __future__ import annotations


class VtrioError(Exception):
    """Base of every error vtrio raises on purpose."""


class ConfigError(VtrioError):
    """A configuration that cannot be used.

    Attributes:
        source: the file the problem is in ("" when not from a file).
        path: a JSON path such as ``$.inbounds[0].settings.clients[1].id``.
        message: what was expected, and a hint where one is obvious.
    """

    def __init__(self, message: str, *, path: str = "$", source: str = "") -> None:
        self.message = message
        self.path = path
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path}: {self.message}"


class ConfigErrors(VtrioError):
    """Several configuration problems found in one pass; each is one line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class ProtocolError(VtrioError):
    """The VMess state machine could not go on."""


class LocalProtocolError(ProtocolError):
    """We misused the state machine: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not valid VMess."""


class AuthenticationError(RemoteProtocolError):
    """The peer could not be authenticated (unknown user, skew, replay, bad tag).

    The reason is for the log only: it never reaches the wire (spec section 9).
    """


class DialError(VtrioError):
    """An outbound could not connect to its destination."""
