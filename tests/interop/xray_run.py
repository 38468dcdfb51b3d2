"""Run Xray-core from its Python binding (the ``Xray-core`` wheel) on one
config file, as the harness runs the other peers' binaries: ``python
xray_run.py CONFIG`` serves until killed; ``python xray_run.py --version``
starts an empty config, which logs the core's version (the binding's start
may not return: the caller kills it once the version is out).

The Go runtime inside takes SIGTERM away from Python (its threads receive
it, and neither the default action nor a Python handler runs), so the
harness ends this process with SIGKILL, and so does ``--version`` itself.
"""

from __future__ import annotations

import os
import signal
import sys

import xray


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        xray.startFromJSON('{"log": {"loglevel": "warning"}}')
    else:
        with open(sys.argv[1]) as config:
            xray.startFromJSON(config.read())
        signal.pause()
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
