"""The driver's side of the load generators: one process per ``Generator``, fed a JSON spec."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

from .servers import RunningServer, ServerKind

HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN = os.path.join(HERE, "loadgen.py")


class Generator:
    """A load-generator process fed one JSON spec."""

    def __init__(self, spec: dict) -> None:
        self.process = subprocess.Popen([sys.executable, LOADGEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        self.result: dict | None = None

    def wait_ready(self) -> bool:
        line = self.process.stdout.readline().strip()
        if line == "ready":
            return True
        self.result = json.loads(line) if line.startswith("{") else {"failed": line or "exited"}
        return False

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def read_result(self, timeout: float) -> dict:
        """The result line of a generator that stays up after it (the storm's, ``hold``: its connections
        stay open until ``finish``), or a failure once ``timeout`` has passed without one."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().strip() if ready else ""
        self.result = json.loads(line) if line.startswith("{") else {"failed": line or "load generator did not report"}
        return self.result

    def finish(self, timeout: float) -> dict:
        if self.result is None:
            try:
                out, _ = self.process.communicate(timeout=timeout)
                self.result = json.loads(out.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                self.process.kill()
                self.process.wait()
                self.result = {"failed": "load generator did not finish"}
        elif self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.result


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def merge(results: list[dict]) -> dict:
    keys = ("delivered", "expected", "disorder", "foreign", "errors", "closed", "connections", "compressed")
    merged = {key: sum(r.get(key, 0) for r in results) for key in keys}
    firsts = [r["first"] for r in results if r.get("first")]
    merged["first"] = min(firsts, default=0.0)
    merged["last"] = max((r.get("last", 0.0) for r in results), default=0.0)
    merged["failed"] = "; ".join(r["failed"] for r in results if r.get("failed"))
    merged["latencies_us"] = [v for r in results for v in r.get("latencies_us", [])]
    return merged


def clean(result: dict) -> bool:
    return (not result.get("failed") and result["delivered"] == result["expected"]
            and not result["disorder"] and not result["foreign"] and not result["errors"])


def start_one_topic(server: RunningServer, kind: ServerKind, parts: int, subscriber: dict, publisher: dict,
                    deadline: float, generators: list[Generator],
                    publish_to: RunningServer | None = None) -> tuple[dict, dict]:
    """Subscribers of topic T in session s1 (``subscriber["connections"]`` of them, over
    ``parts`` processes), then one publisher (on ``publish_to``, default the same server); go.
    Returns (publisher's result, subscribers' merged).

    Raises RuntimeError (a failed run, see ``attempt``) when a generator does not get ready.
    """
    common = {"dialect": kind.dialect, "port": server.port, "deadline": deadline, "session": "s1", "topic": "T"}
    subs = [Generator({**common, "role": "subscribe", **subscriber, "connections": n})
            for n in split(subscriber["connections"], parts)]
    generators += subs
    if not all(g.wait_ready() for g in subs):
        raise RuntimeError(merge([g.finish(deadline) for g in subs])["failed"] or "a subscriber did not start")
    sender = Generator({**common, "role": "publish", **publisher, "port": (publish_to or server).port})
    generators.append(sender)
    if not sender.wait_ready():
        raise RuntimeError(sender.finish(deadline).get("failed") or "the publisher did not start")
    sender.go()
    sent = sender.finish(deadline + 10)
    return sent, merge([g.finish(deadline + 10) for g in subs])
