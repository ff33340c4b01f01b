"""Peer: a minimal asyncio server on the `websockets` package, speaking rusty_ws's text protocol.

Fan-out uses ``websockets.broadcast`` (encode once, write to every subscriber).
Compression is off, as in rusty_ws by default; ``deflate`` turns on the
package's default permessage-deflate (per-connection contexts, so broadcast
compresses once per subscriber). Run: ``python peer_websockets.py PORT [deflate]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone

from websockets.asyncio.server import broadcast, serve

subscribers: dict[tuple[str, str], set] = {}


async def handler(ws) -> None:
    session, name, mine = "default", None, set()
    try:
        async for text in ws:
            if text == "ping":
                await ws.send("pong")
                continue
            verb, _, argument = text.partition(":")
            if verb == "publish-json":
                message = json.loads(argument)
                key = (message["topic"], message.get("session_id") or session)
                delivery = json.dumps({
                    "publisher_name": message.get("publisher_name") or name or "anonymous",
                    "topic": key[0],
                    "payload": message.get("payload"),
                    "timestamp": message.get("timestamp") or datetime.now(timezone.utc).isoformat(),
                    "session_id": key[1],
                }, ensure_ascii=False, separators=(",", ":"))
                broadcast(subscribers.get(key, ()), delivery)
            elif verb in ("subscribe", "unsubscribe"):
                topic, _, named = argument.partition("|")
                key = (topic, named or session)
                if verb == "subscribe":
                    subscribers.setdefault(key, set()).add(ws)
                    mine.add(key)
                else:
                    subscribers.get(key, set()).discard(ws)
                    mine.discard(key)
            elif verb == "register-session":
                session = argument
            elif verb == "register-name":
                name = argument
            else:
                await ws.send('error:{"code":"unknown_command","message":"unknown command"}')
    finally:
        for key in mine:
            subscribers.get(key, set()).discard(ws)


async def main(port: int, compression: str | None) -> None:
    async with serve(handler, "127.0.0.1", port, compression=compression, backlog=4096):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "deflate" if sys.argv[2:] == ["deflate"] else None))
