"""Subcommands that other packages add to ``ddplug``: the adapters' ``cl`` and ``fl``.

A package declares an entry point in the ``ddplug.commands`` group whose object is a
:class:`Command`. The core never imports an adapter: it loads the entry points when the
parser is built, and a command whose extra is not installed still shows in ``ddplug
--help``, saying what to install, and fails with that line when run. The module an entry
point names should be light (argparse only): the heavy imports belong in ``run``.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from ddplug.errors import DdplugError

GROUP = "ddplug.commands"


@dataclass(frozen=True)
class Command:
    """One ``ddplug NAME`` subcommand contributed by another package."""

    name: str
    help: str
    extra: str  # the pip extra that brings its dependencies: pip install 'ddplug[EXTRA]'
    requires: tuple[str, ...]  # top-level modules it needs; missing ones make it a stub
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    def missing(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


def discover_commands() -> list[Command]:
    """The commands registered in the ``ddplug.commands`` entry-point group, by name."""
    commands = []
    for entry in entry_points(group=GROUP):
        command = entry.load()
        if not isinstance(command, Command) or command.name != entry.name:
            raise DdplugError(f"entry point {entry.value} in {GROUP} is not a ddplug Command named {entry.name!r}")
        commands.append(command)
    return sorted(commands, key=lambda command: command.name)


def add_commands(subparsers: argparse._SubParsersAction, commands: list[Command]) -> None:
    """One subparser per command; a command with missing modules becomes a stub that says
    which extra to install."""
    for command in commands:
        missing = command.missing()
        if not missing:
            parser = subparsers.add_parser(command.name, help=command.help)
            command.add_arguments(parser)
            parser.set_defaults(run=command.run)
            continue
        install = f"pip install 'ddplug[{command.extra}]'"
        parser = subparsers.add_parser(command.name, help=f"{command.help} [not installed: {install}]",
                                       add_help=False)
        parser.set_defaults(run=_unavailable(command, missing, install), takes_any_arguments=True)


def _unavailable(command: Command, missing: list[str], install: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise DdplugError(f"'ddplug {command.name}' needs {', '.join(missing)}, which is not installed: {install}")

    return run
