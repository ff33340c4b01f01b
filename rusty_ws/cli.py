"""The ``rusty-ws`` console script: Flask's CLI around ``create_app`` plus the hub's commands.

``rusty-ws serve``, ``rusty-ws token alice``, ``rusty-ws hash-password``, and
Flask's own (``rusty-ws routes``, ``rusty-ws run``).
"""

from __future__ import annotations

from flask.cli import FlaskGroup

from .app import create_app
from .commands import group

__all__ = ["cli", "main"]

cli = FlaskGroup(create_app=create_app, help="The rusty_ws pub/sub hub.")
for name, command in group.commands.items():
    cli.add_command(command, name)


def main() -> None:
    """Entry point of the ``rusty-ws`` script."""
    cli.main(prog_name="rusty-ws")
