"""`journeys i18n`: the translation catalogs (configs/locales) of the mail, documents and pages.

    journeys i18n update            marked text → journeys.pot → each <lang>/LC_MESSAGES/journeys.po
    journeys i18n update --add it   the same, and start an Italian catalog
    (translate: fill the empty msgstr entries of each .po; `check` lists them)
    journeys i18n compile           .po → .mo (infra/dev.py runs it at setup)
    journeys i18n check             exit 1 if a promised language lacks a translation or one
                                    changes a msgid's placeholders
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import UserError, console, user_errors
from tasks.settings import get_settings

i18n_app = typer.Typer(no_args_is_help=True, help="Translation catalogs (configs/locales).")

RootOpt = Annotated[Path | None, typer.Option(
    "--root", help="Project folder with babel.cfg (default: this checkout).")]
ConfigDirOpt = Annotated[Path | None, typer.Option(
    "--config-dir", help="Folder of YAML files and locales/ (default: $JOURNEYS_CONFIG_DIR, "
    "else ./configs).")]


def _root(root: Path | None) -> Path:
    from tasks.i18n import PROJECT_ROOT

    folder = (root or PROJECT_ROOT).resolve()
    if not (folder / "babel.cfg").exists():
        raise UserError(f"{folder}: no babel.cfg (give the project folder with --root)")
    return folder


def _locales(config_dir: Path | None):
    from tasks.i18n import locales_dir

    return locales_dir(config_dir or get_settings().config_dir)


@i18n_app.command("extract")
@user_errors
def extract_cmd(root: RootOpt = None) -> None:
    """Write configs/locales/journeys.pot: every text marked for translation."""
    from tasks.i18n import extract, locales_dir, template_file, write_catalog

    folder = _root(root)
    catalog = extract(folder)
    target = template_file(locales_dir(folder / "configs"))
    write_catalog(catalog, target)
    console.print(f"{len(catalog)} messages → {target}")


@i18n_app.command("update")
@user_errors
def update_cmd(
    root: RootOpt = None,
    add: Annotated[list[str] | None, typer.Option(
        "--add", help="Start a catalog for this language too (de, pt_BR); repeatable.")] = None,
) -> None:
    """Extract, then bring every catalog in line: new messages come in untranslated (English's
    own catalog copies them), messages no template uses any more go."""
    from tasks.i18n import extract, locales_dir, parsed_locale, update

    for language in add or []:
        if parsed_locale(language) is None or "-" in language:
            raise UserError(f"--add {language!r}: not a locale name (de, fr, pt_BR)")
    folder = _root(root)
    untranslated = update(locales_dir(folder / "configs"), extract(folder), add or [])
    for language, count in untranslated.items():
        console.print(f"{language}: {count} to translate")


@i18n_app.command("compile")
@user_errors
def compile_cmd(
    config_dir: ConfigDirOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Also the up-to-date ones.")] = False,
) -> None:
    """Compile each catalog whose .mo is missing or older than its .po."""
    from tasks.i18n import compile_catalogs

    written = compile_catalogs(_locales(config_dir), force)
    console.print(f"{len(written)} catalogs compiled" + "".join(f"\n  {p}" for p in written))


@i18n_app.command("check")
@user_errors
def check_cmd(config_dir: ConfigDirOpt = None, root: RootOpt = None) -> None:
    """Every message translated for en and de (and the mail for fr and es), placeholders kept;
    for this checkout's catalogs also that journeys.pot holds what the templates mark now.
    One line per problem, exit 1 if any."""
    from tasks.i18n import check, extract, locales_dir

    locales = _locales(config_dir)
    folder = _root(root)
    ours = locales.resolve() == locales_dir(folder / "configs").resolve()
    problems = check(locales, extract(folder) if ours else None)
    for problem in problems:
        sys.stdout.write(f"{problem}\n")  # one line each, never wrapped by rich
    if problems:
        raise typer.Exit(1)
    console.print("catalogs OK")
