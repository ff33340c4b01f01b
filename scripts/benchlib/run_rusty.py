"""rusty_ws as the benchmark runs it: ``python run_rusty.py PORT``, logging at WARNING."""

from __future__ import annotations

import logging
import sys

from rusty_ws import create_app
from rusty_ws.serving import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    app = create_app({
        "RUSTY_WS_JWT_SECRET_KEY": "benchmark-" + "x" * 32,
        "RUSTY_WS_MAX_CONNECTIONS": 20_000,
        "RUSTY_WS_MAX_SUBSCRIPTIONS": 100,
    })
    print("ready", flush=True)
    serve(app, "127.0.0.1", int(sys.argv[1]))
