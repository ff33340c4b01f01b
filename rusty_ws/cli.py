"""The ``rusty-ws`` console script: Flask's CLI around ``create_app`` plus the hub's commands.

``rusty-ws serve``, ``rusty-ws token alice``, ``rusty-ws hash-password``, and
Flask's own (``rusty-ws routes``, ``rusty-ws run``). ``rusty-ws --version``
prints rusty_ws's version first, then Flask's ``--version`` lines.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import click
from flask.cli import FlaskGroup

from . import __version__
from .server.app import create_app
from .server.cli import group

__all__ = ["cli", "main", "version_text"]


class _HubCli(FlaskGroup):
    """Flask's CLI, without the nested ``rusty-ws`` group that ``init_app`` adds for ``flask rusty-ws``."""

    def list_commands(self, ctx):
        return [name for name in super().list_commands(ctx) if name != group.name]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The hub's own commands at once; any other name through Flask's lookup.

        Flask's lookup first loads every ``flask.commands`` entry point, which reads
        the metadata of every installed distribution (~4 ms of CPU for 53 here) on
        the way to ``rusty-ws serve``'s listen, the storm's critical path. The hub's
        commands are the hub's even if a plugin took the same name.
        """
        own = group.commands.get(cmd_name)
        if own is not None:
            return own
        return super().get_command(ctx, cmd_name)


def version_text() -> str:
    """What ``rusty-ws --version`` prints: rusty_ws's version, then what Flask's ``--version`` says."""
    return "\n".join([
        f"rusty_ws {__version__}",
        f"Python {platform.python_version()}",
        f"Flask {importlib.metadata.version('flask')}",
        f"Werkzeug {importlib.metadata.version('werkzeug')}",
    ])


def _print_version(ctx: click.Context, _: click.Parameter, value: Any) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_text(), color=ctx.color)
    ctx.exit()


_version_option = click.Option(
    ["--version"], is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show rusty_ws's version (and Python's, Flask's and Werkzeug's).",
)

cli = _HubCli(create_app=create_app, add_version_option=False, params=[_version_option],
              help="The rusty_ws pub/sub hub.")
for name, command in group.commands.items():
    cli.add_command(command, name)


def main() -> None:
    """Entry point of the ``rusty-ws`` script."""
    cli.main(prog_name="rusty-ws")
