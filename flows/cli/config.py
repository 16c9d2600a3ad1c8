"""`journeys config`: the business configuration (configs/*.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import console, get_settings, user_errors

config_app = typer.Typer(no_args_is_help=True, help="Business configuration (YAML files).")


@config_app.command("check")
@user_errors
def config_check_cmd(
    config_dir: Annotated[Path | None, typer.Option(
        "--config-dir", help="Folder of YAML files (default: $JOURNEYS_CONFIG_DIR, else "
        "./configs).")] = None,
) -> None:
    """Validate every config file at once: one line per problem (file and key), exit 1 if any."""
    from tasks.config import SECTIONS, check_config

    folder = config_dir or get_settings().config_dir
    problems = check_config(folder)
    for problem in problems:  # one line each (a YAML parser's message spans several)
        sys.stdout.write(" ".join(problem.split()) + "\n")  # never wrapped by rich
    if problems:
        raise typer.Exit(1)
    console.print(f"config OK: {len(SECTIONS)} files")
