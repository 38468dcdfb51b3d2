"""Task runner: lint, typecheck, tests, interop, bench.

The default run is lint, typecheck and tests. ``interop`` installs the real
peers (v2ray from Debian, sing-box from PyPI) and runs only the interop suite.
"""

from __future__ import annotations

import shutil

import nox

nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests"]
if shutil.which("uv"):
    nox.options.default_venv_backend = "uv"

PYTHONS = ["3.11"]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "vtrio", "tests", "noxfile.py")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test,fast]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
def interop(session: nox.Session) -> None:
    if not shutil.which("v2ray"):
        session.run("apt-get", "install", "-y", "v2ray", external=True)
    session.install("-e", ".[test,fast]")
    # CI=true: a missing peer fails instead of skipping.
    session.run(
        "pytest", "-m", "interop", "tests/interop", *session.posargs, env={"CI": "true"}
    )


@nox.session(python=PYTHONS)
def bench(session: nox.Session) -> None:
    session.install("-e", ".[fast]")
    session.run("python", "bench/chains.py", *session.posargs)
