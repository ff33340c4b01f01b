"""Peer: Flask-SocketIO in threading mode (the stack a Flask user would otherwise pick).

Rooms stand for (session, topic) pairs. Run: ``python peer_socketio.py PORT``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

from flask import Flask
from flask_socketio import SocketIO, emit, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="threading", logger=False, engineio_logger=False)


@socketio.on("join")
def join(data: dict) -> bool:
    join_room(f"{data['session']}|{data['topic']}")
    return True  # the acknowledgement the load generator waits for


@socketio.on("publish")
def publish(data: dict) -> None:
    session = data.get("session_id") or "default"
    emit("message", {
        "publisher_name": data.get("publisher_name") or "anonymous",
        "topic": data["topic"],
        "payload": data.get("payload"),
        "timestamp": data.get("timestamp") or datetime.now(timezone.utc).isoformat(),
        "session_id": session,
    }, to=f"{session}|{data['topic']}")


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    print("ready", flush=True)
    socketio.run(app, host="127.0.0.1", port=int(sys.argv[1]), allow_unsafe_werkzeug=True, log_output=False)
