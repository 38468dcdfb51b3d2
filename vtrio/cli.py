"""The ``vtrio`` command line: serve, client, check, uuid, link, version.

Every command turns vtrio's own errors into a message on stderr and an exit
code; a traceback is always a bug.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vtrio",
    help="VMess proxy server and client on Trio (v2ray, Xray, sing-box compatible).",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    """Entry point of the ``vtrio`` console script and ``python -m vtrio``."""
    app()
