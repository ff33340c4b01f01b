"""The benchmark's quick mode runs here too: it must finish and rusty_ws must lose nothing.

It asserts no loss, no reordering and no crossed session for rusty_ws; it
asserts no speed (speed is measured by scripts/bench.py, not in a test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import MS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_benchmark_runs_and_rusty_ws_loses_nothing(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300_000 * MS, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["fanout"]["100"]["rusty_ws"]["ok"]
    assert results["latency"]["rusty_ws"]["ok"] and results["latency_2000"]["rusty_ws"]["ok"]
    assert results["sessions"]["rusty_ws"]["ok"]
    assert all(row["ok"] for row in results["capacity"]["rusty_ws"])
    assert results["compression"]["100"]["rusty_ws"]["ok"]  # every subscriber inflated every message
    assert results["connect"]["rusty_ws"]["ok"] and results["connect"]["rusty_ws"]["connections"] == 500
    storm = results["storm"]["rusty_ws"]
    assert storm["ok"] and all(run["back"] == 500 for run in storm["runs"])  # every client dropped came back
    assert all(run["healthz_answers"] > 0 for run in storm["runs"])
    assert all(run["internal_answers"] > 0 for run in storm["runs"])  # the hub's internal port, polled too
    assert "websockets" in results["storm"], "the peer's storm did not run"  # its outcome is measured, not asserted
    for name in ("websockets", "flask-socketio", "ceiling", "per-send"):
        assert name in results["fanout"]["100"], f"peer {name} did not run"


def test_quick_multi_node_scenarios_run_and_lose_nothing(tmp_path) -> None:
    """Two nodes on a private redis-server, beside one node: every delivery counted, in order."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--quick", "--out", str(tmp_path),
         "--scenarios", "xfanout,xsessions,xpublish"],
        capture_output=True, text=True, timeout=300_000 * MS, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "multinode_skipped" not in results
    assert results["xfanout"]["100"]["cross"]["ok"] and results["xfanout"]["100"]["single"]["ok"]
    assert results["xsessions"]["cross"]["ok"]
    assert results["xfanout"]["100"]["cross-nohistory"]["ok"] and results["xsessions"]["cross-nohistory"]["ok"]
    assert all(row["ok"] for row in results["xpublish"].values())
    assert results["xpublish"]["sender"]["redis_us_per_message"] is not None


def test_the_callgrind_driver_runs_natively_and_loses_nothing() -> None:
    """scripts/callgrind_sessions.py's hub role, without valgrind: every delivery, in order, and its figures."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "callgrind_sessions.py"), "hub", "--pairs", "5",
         "--rounds", "3"],
        capture_output=True, text=True, timeout=120_000 * MS, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["ok"] and report["delivered"] == report["expected"] == 5 * 2 * 3 * 8
    # os.times() ticks every 10 ms: a run this short may read 0 CPU, never less or missing.
    assert report["cpu_us_per_delivery"] >= 0 and report["switches_per_delivery"] >= 0


def test_the_callgrind_driver_sets_the_collector_up_as_serve_does_and_reports_it() -> None:
    """``--gc SPEC``: the host's thresholds first, then ``freeze_startup_objects`` (its full-collection threshold
    unless SPEC gives a third); ``0`` turns the collector off; a malformed SPEC fails the run."""
    def hub(spec: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "callgrind_sessions.py"), "hub", "--pairs", "2",
             "--rounds", "2", "--gc", spec],
            capture_output=True, text=True, timeout=120_000 * MS, cwd=ROOT,
        )

    from rusty_ws.server.serve import FULL_COLLECTION_THRESHOLD
    for spec, threshold, enabled in (("5000", [5000, 10, FULL_COLLECTION_THRESHOLD], True),
                                     ("5000,20,7", [5000, 20, 7], True), ("0", None, False)):
        result = hub(spec)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = json.loads(result.stdout.splitlines()[-1])
        assert report["ok"] and report["peak_rss_kib"] >= report["rss_kib"] > 0
        assert report["gc"]["enabled"] is enabled
        if threshold is not None:
            assert report["gc"]["threshold"] == threshold
        else:
            assert all(report["gc"][gen]["count"] == 0 for gen in ("gen0", "gen1", "gen2"))
    assert hub("lots").returncode != 0


def test_the_connect_driver_measures_windows_by_connections_held_and_the_close() -> None:
    """scripts/callgrind_connect.py ``--windows``: one hub, each window's connections counted once, every
    client in and subscribed, then the close window (every request thread ended)."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "callgrind_connect.py"), "measure", "--windows", "20,50",
         "--batch", "10", "--ping-interval", "0", "--close-window"],
        capture_output=True, text=True, timeout=120_000 * MS, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    windows = report["windows"]
    assert [(w["held_before"], w["connections"]) for w in windows] == [(0, 20), (20, 30), (50, 50)]
    assert windows[-1]["closed_all"] and windows[-1]["threads_left"] == 0
    for window in windows:
        assert window["user"] >= 0 and window["system"] >= 0 and window["gen0"] >= 0


def test_the_start_up_driver_reports_the_cpu_to_listening_and_no_stale_pyc_after_the_bench_compiled() -> None:
    """scripts/startup_cost.py without valgrind, after what bench.py does first (``compile_rusty_ws``)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from benchlib.servers import compile_rusty_ws
    finally:
        sys.path.pop(0)
    assert compile_rusty_ws()
    for entry in ("cli", "bench"):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "startup_cost.py"), "--entry", entry, "--runs", "1"],
            capture_output=True, text=True, timeout=120_000 * MS, cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = json.loads(result.stdout.splitlines()[-1])
        assert report["entry"] == entry and report["stale_pyc"] == 0
        assert len(report["cpu_s"]) == 1 and report["cpu_s"][0] > 0  # a start-up never costs under a 10 ms tick
