from __future__ import annotations

from vtrio.cli import main

main()
