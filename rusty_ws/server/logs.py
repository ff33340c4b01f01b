"""How the hub's log reads: one format for ``rusty-ws serve``, and an access log that polling leaves quiet.

``rusty-ws serve`` logs every line as::

    2026-12-01 10:25:56 INFO rusty_ws.server: conn-3 connected from 127.0.0.1 as anonymous in session 'default'

The hub's loggers are ``rusty_ws.server`` (and ``rusty_ws.client`` on the
client side); werkzeug's access lines keep their logger, ``werkzeug``.

``AccessLogFilter`` sits on the ``werkzeug`` logger of the stand-alone hub
(``create_app``, ``rusty-ws serve``). It masks tokens in request lines
(``/ws?token=[redacted]``, with ``auth.redact_tokens``), and it moves to DEBUG, unless they failed (a status of
400 or more stays at INFO), the lines of what the hub's page polls or loads
on every visit (``/healthz``, the JS modules and the stylesheet under
``/rusty_ws/``; the page asks for ``/healthz`` every 2 s, which filled the
log with a line per open page every 2 s) and of ``/ws`` (under ``HubServer``
written at the upgrade, with the status 101; under ``flask run`` when the
WebSocket ends, with 200: the connection's own lines, with who it was and how
it ended, say more).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..auth import redact_tokens

__all__ = ["LOG_FORMAT", "DATE_FORMAT", "LEVELS", "ACCESS_LOGGER", "AccessLogFilter", "configure_logging",
           "quiet_access_log", "mask_tokens", "without_colours", "log_start_up"]

#: The format of ``rusty-ws serve``: timestamp, level as a word, logger name, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: ``rusty-ws serve --log-level`` choices.
LEVELS = ("debug", "info", "warning", "error")

#: The logger of the access lines: werkzeug's, as under ``flask run``.
ACCESS_LOGGER = "werkzeug"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours request lines on a terminal
#: Paths whose successful access lines go to DEBUG: the page's polling, its modules, the WebSocket.
_QUIET = re.compile(r"(?:^|/)(?:healthz|ws|rusty_ws/[\w.-]+\.(?:js|css))$")


def without_colours(text: str) -> str:
    """``text`` without ANSI colour codes (werkzeug colours request lines, even for a file)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def mask_tokens(text: str) -> str:
    """``text`` with every token in it replaced by ``[redacted]`` (``auth.redact_tokens``: one rule for every log)."""
    return redact_tokens(text)


class AccessLogFilter(logging.Filter):
    """Masks tokens in werkzeug's lines, and moves successful lines of polling and WebSockets to DEBUG.

    A moved line is dropped unless its logger is enabled for DEBUG. Put it on the
    ``werkzeug`` logger (``quiet_access_log``), not on a handler: a logger's
    filters run before its handlers look at the level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_tokens(record.msg) if isinstance(record.msg, str) else record.msg
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = args = tuple(mask_tokens(arg) if isinstance(arg, str) else arg for arg in args)
        if record.levelno == logging.INFO and _is_polling(record.msg, args):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _is_polling(message: Any, args: Any) -> bool:
    """Is this werkzeug's access line (``'"%s" %s %s'``: request line, status, size) of a quiet path, not failed?"""
    if not (isinstance(message, str) and message.endswith('"%s" %s %s') and isinstance(args, tuple)
            and len(args) == 3):
        return False
    request_line, status = without_colours(str(args[0])), str(args[1])
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[0] not in ("GET", "HEAD") or not status.isdigit() or int(status) >= 400:
        return False
    return bool(_QUIET.search(parts[1].partition("?")[0]))


def quiet_access_log() -> None:
    """Put one ``AccessLogFilter`` on the ``werkzeug`` logger. Idempotent; the filter is process-wide."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(existing, AccessLogFilter) for existing in access.filters):
        access.addFilter(AccessLogFilter())


def configure_logging(level: str = "info") -> None:
    """The log of ``rusty-ws serve``: ``LOG_FORMAT`` on stderr at ``level``, unless logging is set up already.

    Also quiets the access log (``quiet_access_log``), and gives werkzeug's logger the
    same level, which it would otherwise set to INFO on its first line.
    """
    if not logging.getLogger().handlers:
        number = logging.getLevelName(level.upper())
        logging.basicConfig(level=number, format=LOG_FORMAT, datefmt=DATE_FORMAT)
        access = logging.getLogger(ACCESS_LOGGER)
        if access.level == logging.NOTSET:
            access.setLevel(number)
    quiet_access_log()


def log_start_up(logger: logging.Logger, said: list[tuple[int, str]], source: str = __file__) -> None:
    """Log the start-up lines ``said`` (level, line), heard even where nothing set up logging.

    ``source``: the file that said them (Flask's format names its module).
    Under ``flask --app rusty_ws run`` (or any host that configured no logging)
    no handler sees ``logger``, and Python drops what is below WARNING: the
    derived connection limit went unseen. There the lines at INFO and above go
    to Flask's own ``default_handler`` (what ``app.logger`` writes through when
    nothing is configured: stderr, Flask's format), and to it only, so nothing
    is said twice; werkzeug's server does the same for its own lines. Where a
    handler exists (``rusty-ws serve``'s, an app's own), they are logged as any other line.
    """
    from flask.logging import default_handler

    unheard = not logger.hasHandlers()
    for level, line in said:
        if unheard and level >= logging.INFO:
            record = logger.makeRecord(logger.name, level, source, 0, "%s", (line,), None)
            if logger.filter(record):  # the logger's own filters (the token filter) still apply
                default_handler.handle(record)
        else:
            logger.log(level, "%s", line)
