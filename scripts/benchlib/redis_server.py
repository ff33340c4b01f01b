"""A private redis-server for the multi-node scenarios: a free loopback port, no persistence.

Never the machine's shared Redis: the benchmark starts its own, reads its CPU
time from ``INFO cpu`` around each run, and kills it at the end.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from .servers import free_port


class RedisProcess:
    """One redis-server; ``stop()`` ends it. Raises RuntimeError when it cannot be started."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is missing (Debian: apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rusty_ws-bench-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.command(b"PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)  # polling a port that is not open yet: nothing to wait on

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: bytes) -> bytes:
        """One command on a fresh connection; its raw reply (enough for PING and INFO)."""
        packed = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(packed)
            data = sock.recv(65536)
            if data.startswith(b"$"):  # a bulk string: read all of it
                length = int(data[1:data.index(b"\r\n")])
                while len(data) < data.index(b"\r\n") + 2 + length + 2:
                    data += sock.recv(65536)
            return data

    def cpu_seconds(self) -> float:
        """Redis' own CPU time so far (user + system), from ``INFO cpu``."""
        fields = dict(line.split(":", 1) for line in self.command(b"INFO", b"cpu").decode().splitlines()
                      if ":" in line)
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
