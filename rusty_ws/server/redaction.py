"""Tokens kept out of log lines: a logging filter that blanks them before any handler sees them.

werkzeug logs every request line at INFO (``GET /ws?token=eyJ... HTTP/1.1``),
under ``flask run`` and under the hub's own server alike, and a proxy or WSGI
server may log it too. ``init_app`` puts one ``TokenRedactor`` on the loggers
that can carry a request line or a frame: ``werkzeug``, ``gunicorn.access``,
``gunicorn.error`` and ``rusty_ws.server``. It rewrites each record's message
and arguments (and a traceback's text), replacing

- the value of a ``token=`` query parameter, whatever it holds;
- what follows ``Bearer``;
- anything shaped like a JWT (``eyJ...``, one to three dot-separated parts)

(``auth.redact_tokens``). A filter runs only for records a logger actually emits, so it costs nothing
on the hot path. The hub also never formats a token into a log line or an
error reply in the first place (``auth:``/``refresh:`` frames are logged as
their verb only); this is the net under that rule.
"""

from __future__ import annotations

import logging
from typing import Any

from ..auth import REDACTED, redact_tokens

__all__ = ["TokenRedactor", "REDACTED", "redact_tokens", "install", "LOGGERS"]

#: The loggers ``install`` filters. Each by name: a logger's filters do not see its children's records
#: (logging runs only the handlers of the parents), so a child logger of the hub's is named here too.
LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "rusty_ws.server", "rusty_ws.server.pacing",
           "rusty_ws.server.stop")


def _redacted(value: Any) -> Any:
    return redact_tokens(value) if isinstance(value, str) else value


class TokenRedactor(logging.Filter):
    """A ``logging.Filter`` that blanks tokens in a record (and lets every record through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redacted(arg) for arg in args)
        elif isinstance(args, dict):  # gunicorn's access log formats with a dict of its own type:
            for key, value in list(args.items()):  # kept, changed in place
                if isinstance(value, str):
                    args[key] = redact_tokens(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_tokens(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_tokens(record.exc_text)
        return True


_REDACTOR = TokenRedactor()


def install() -> TokenRedactor:
    """Put the one ``TokenRedactor`` on every logger of ``LOGGERS``. Idempotent."""
    for name in LOGGERS:
        logging.getLogger(name).addFilter(_REDACTOR)  # addFilter ignores a filter already there
    return _REDACTOR
