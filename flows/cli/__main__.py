"""`python -m flows.cli ...`: the same as the `journeys` command."""

from __future__ import annotations

from flows.cli import main

main()
