"""rusty_ws as the benchmark runs it: ``python run_rusty.py PORT [deflate]``, logging at WARNING.

``deflate`` sets ``RUSTY_WS_COMPRESSION`` to zlib's default level, 6.
"""

from __future__ import annotations

import logging
import sys

from rusty_ws import create_app
from rusty_ws.server.serving import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    app = create_app({
        "RUSTY_WS_JWT_SECRET_KEY": "benchmark-" + "x" * 32,
        "RUSTY_WS_MAX_CONNECTIONS": 20_000,
        "RUSTY_WS_MAX_SUBSCRIPTIONS": 100,
        "RUSTY_WS_COMPRESSION": 6 if sys.argv[2:] == ["deflate"] else 0,
    })
    print("ready", flush=True)
    serve(app, "127.0.0.1", int(sys.argv[1]))
