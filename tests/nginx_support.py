"""nginx for tests: a documented configuration, run in the foreground as the test user.

``http_conf`` wraps an ``http``-level snippet (``upstream``, ``map``, ``server``
blocks, as the docs show them) in a main configuration whose pid file, logs and
temporary paths all live in a temporary prefix; ``Nginx`` checks it with
``nginx -t`` and runs it until ``stop()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading

from support import WAIT

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def http_conf(body: str, work_dir: str) -> str:
    """A whole nginx.conf around the ``http``-level ``body``, with every path under ``work_dir``."""
    temp = "\n".join(f"    {kind}_temp_path {work_dir}/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\nmaster_process on;\nworker_processes 1;\npid {work_dir}/nginx.pid;\n"
            f"error_log stderr notice;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log off;\n{temp}\n{body}\n}}\n")


def check(conf: str, work_dir: str) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf`` (written to ``work_dir/nginx.conf``), with ``work_dir`` as the prefix."""
    assert NGINX, "nginx is missing: scripts/test.sh installs it"
    path = os.path.join(work_dir, "nginx.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(conf)
    return subprocess.run([NGINX, "-p", work_dir, "-c", path, "-e", "stderr", "-t"], capture_output=True,
                          text=True, timeout=WAIT * 3)


class Nginx:
    """nginx in the foreground, on a free loopback port; ready once its master has forked a worker."""

    def __init__(self, conf: str, port: int, work_dir: str) -> None:
        self.port = port
        checked = check(conf, work_dir)
        assert checked.returncode == 0, checked.stderr
        assert NGINX
        command = [NGINX, "-p", work_dir, "-c", os.path.join(work_dir, "nginx.conf"), "-e", "stderr"]
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, name="test-nginx-log", daemon=True)
        self._reader.start()
        if not self._ready.wait(WAIT * 3):
            self.stop()
            raise AssertionError("nginx did not start:\n" + "".join(self.lines))

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "start worker process" in line:  # the master listens before it forks workers
                self._ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(WAIT * 3)
        self._reader.join(WAIT)
