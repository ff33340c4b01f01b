"""The ``rusty-ws`` console script: Flask's CLI around ``create_app`` plus the hub's commands.

``rusty-ws serve``, ``rusty-ws token alice``, ``rusty-ws hash-password``, and
Flask's own (``rusty-ws routes``, ``rusty-ws run``).
"""

from __future__ import annotations

from flask.cli import FlaskGroup

from .server.app import create_app
from .server.cli import group

__all__ = ["cli", "main"]

class _HubCli(FlaskGroup):
    """Flask's CLI, without the nested ``rusty-ws`` group that ``init_app`` adds for ``flask rusty-ws``."""

    def list_commands(self, ctx):  # type: ignore[no-untyped-def]
        return [name for name in super().list_commands(ctx) if name != group.name]


cli = _HubCli(create_app=create_app, help="The rusty_ws pub/sub hub.")
for name, command in group.commands.items():
    cli.add_command(command, name)


def main() -> None:
    """Entry point of the ``rusty-ws`` script."""
    cli.main(prog_name="rusty-ws")
