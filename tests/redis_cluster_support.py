"""Test support for the Redis Cluster broker: a private cluster of redis-server processes on free ports.

``RedisCluster(masters=3, replicas=1)`` starts six ``redis-server --cluster-enabled yes``
processes on free loopback ports, each with its own directory and cluster config file,
joins them with ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``
and returns once every node reports ``cluster_state:ok`` and agrees on the slot map
(bounded polling of what the nodes say, never a sleep). ``close`` kills every process
it started and removes the directories, whatever state the test left them in.

The node timeout is short (``NODE_TIMEOUT_MS``) so that a killed master is replaced by
its replica within a few seconds, and ``cluster-require-full-coverage no`` keeps the
other shards serving while one is down (docs/scaling.md says why operators want it too).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from redis_support import SENTINEL, RedisServer, publishes_landed, read_until_sentinel
from rusty_ws.brokers.redis_codec import encode_envelope, shard_channel_name
from rusty_ws.protocol import Delivery, encode_publish
from support import MS, POLL, WAIT, Client, free_port

REDIS_CLI = shutil.which("redis-cli")
#: Milliseconds without an answer before the cluster takes a node for failed (Redis' default: 15000).
NODE_TIMEOUT_MS = 1000
#: Seconds the hubs may take, after a replica won its election, to have it as a connected master: measured
#: 0.1 to 0.4 s with a steady publisher, up to 1.6 s with 2,000 held publishes to send again and a far hub
#: filling its gap first, both hubs in one process at load 26 (docs/scaling.md); the rest is the margin for
#: a loaded machine. Before session 13 a far hub could wait for its own listener for the whole retry timeout.
FOLLOW = 3000 * MS
#: The log line of a replica that was promoted (Redis 7.0).
PROMOTED = "Failover election won"


class ClusterNode(RedisServer):
    """One cluster-enabled redis-server (see ``RedisServer``).

    ``keep_log``: after start, a thread (``test-redis-log-{port}``, ended by the process's end)
    keeps its log lines with their arrival time (``time.time()``) in ``log``, for the
    failover timeline (``failover_at``); without it the log is closed once the node is ready.
    """

    def __init__(self, port: int | None = None, keep_log: bool = False) -> None:
        super().__init__(port)
        self.keep_log = keep_log
        self.log: list[tuple[float, str]] = []
        self._log_thread: threading.Thread | None = None
        # The cluster bus has its own free port: the default (port + 10000) may be taken, or past 65535.
        self.bus_port = free_port()
        self.extra_args = [
            "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port), "--cluster-config-file", f"{self.dir}/nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
            # A replica that never synced cannot take over: start its first sync at once (default: after 5s).
            "--repl-diskless-sync-delay", "0",
        ]

    def start(self) -> None:
        assert self.process is None, "already running"
        from redis_support import REDIS_SERVER

        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "notice", *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        if not self.keep_log:
            self._wait_for_line(b"Ready to accept connections")
            return
        assert self.process.stdout is not None
        ready = threading.Event()
        # Daemon: it ends at the process's end (EOF on the pipe), which close() brings.
        self._log_thread = threading.Thread(target=self._keep_lines, args=(self.process.stdout, ready),
                                            name=f"test-redis-log-{self.port}", daemon=True)
        self._log_thread.start()
        if not ready.wait(WAIT):
            self.kill()
            raise AssertionError(f"redis-server did not get ready: {self.log[-5:]!r}")

    def _keep_lines(self, stream: Any, ready: threading.Event) -> None:
        for raw in iter(stream.readline, b""):  # bounded by the process's life: EOF when it ends
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append((time.time(), line))
            if "Ready to accept connections" in line:
                ready.set()
        stream.close()

    def logged_at(self, text: str) -> float | None:
        """When (``time.time()``) the first log line containing ``text`` arrived (``keep_log`` only); None: none yet."""
        return next((at for at, line in list(self.log) if text in line), None)

    def kill(self) -> None:
        process = self.process
        if process is None or self._log_thread is None:
            super().kill()
            return
        process.kill()
        process.wait(WAIT)
        self.process = None
        self._log_thread.join(WAIT)  # EOF: every line read

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def info(self, section: str) -> dict[str, str]:
        """``INFO``/``CLUSTER INFO`` as a dict (``section`` "cluster" runs CLUSTER INFO)."""
        with contextlib.closing(self.client()) as client:
            text = client.execute_command("CLUSTER INFO") if section == "cluster" else client.execute_command("INFO", section)
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def role(self) -> str:
        return self.info("replication")["role"]

    def shard_channels(self) -> set[bytes]:
        with contextlib.closing(self.client()) as client:
            return set(client.execute_command("PUBSUB", "SHARDCHANNELS"))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` (an observable: what the servers say) every ``POLL`` until true, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL) + 2):
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass  # a node still starting or just killed: ask again
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)  # sleep-ok: Redis has no notification for cluster_state or slot maps; bounded polling of what the servers say
    raise AssertionError(f"timed out waiting for {what}")


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on free loopback ports."""

    def __init__(self, masters: int = 3, replicas: int = 0, keep_logs: bool = False) -> None:
        assert REDIS_CLI, "redis-cli is missing: scripts/test.sh installs it"
        self.nodes = [ClusterNode(free_port(), keep_log=keep_logs) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def url(self) -> str:
        """The broker URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes) + "/"

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(node.address for node in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=WAIT * 10,
            )
            self.wait_ok(WAIT * 10)
        except BaseException:
            self.close()
            raise

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.process is not None]

    def wait_ok(self, timeout: float) -> None:
        """Until every running node says ``cluster_state:ok``, they all see the same masters, and replicas are in sync."""
        def ok() -> bool:
            running = self.running()
            if not all(node.info("cluster")["cluster_state"] == "ok" for node in running):
                return False
            views = {tuple(sorted(self.slot_owners(node).items())) for node in running}
            replicas_synced = all(node.info("replication").get("master_link_status") == "up"
                                  for node in running if node.role() == "slave")
            return len(views) == 1 and all(self.slot_owners(running[0]).values()) and replicas_synced
        wait_for(ok, timeout, "cluster_state:ok on every node, every replica in sync")

    @staticmethod
    def slot_owners(node: ClusterNode) -> dict[str, int]:
        """Master address -> how many slots, as ``node`` sees it (CLUSTER SLOTS)."""
        with contextlib.closing(node.client()) as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        owners: dict[str, int] = {}
        for entry in ranges:
            if isinstance(entry, (list, tuple)):
                start, end, master = entry[0], entry[1], entry[2]
                address = f"{master[0].decode() if isinstance(master[0], bytes) else master[0]}:{master[1]}"
            else:  # redis-py's parsed form: {(start, end): {"primary": (host, port), ...}}
                raise AssertionError(f"unexpected CLUSTER SLOTS shape: {ranges!r}")
            owners[address] = owners.get(address, 0) + end - start + 1
        return owners

    def wait_followed(self, heir: ClusterNode, followed: Callable[[], bool]) -> float:
        """Until ``heir`` (a replica whose master was killed) took over and ``followed()`` says the hubs have it;
        returns the seconds from its promotion (its log: ``keep_logs``) to then, checked against ``FOLLOW``.

        The promotion is the cluster's own time (``NODE_TIMEOUT_MS``, then an election): up to ``WAIT * 6``.
        """
        wait_for(lambda: heir.logged_at(PROMOTED) is not None, WAIT * 6, "the replica to take over")
        wait_for(followed, FOLLOW + WAIT, "the hubs to follow the new master")
        promoted = heir.logged_at(PROMOTED)
        assert promoted is not None
        took = time.time() - promoted
        assert took < FOLLOW, f"the hubs followed the new master {took:.2f} s after its promotion"
        return took

    def masters(self) -> list[ClusterNode]:
        return [node for node in self.running() if node.role() == "master"]

    def move_slot(self, slot: int, target: ClusterNode) -> None:
        """Reshard ``slot`` to ``target`` as ``redis-cli --cluster reshard`` does: IMPORTING, MIGRATING, the
        slot's keys MIGRATEd, then ``SETSLOT NODE`` on every master, the source first (it pushes ``sunsubscribe``
        to its subscribers at once, while the target and the third master still give the old map)."""
        source = self.master_of_slot(slot)
        others = [node for node in self.masters() if node is not source and node is not target]
        ids = {}
        for node in (source, target, *others):
            with contextlib.closing(node.client()) as client:
                ids[node.address] = client.execute_command("CLUSTER MYID").decode()
        with contextlib.closing(target.client()) as to, contextlib.closing(source.client()) as from_:
            to.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.address])
            from_.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.address])
            keys = from_.execute_command("CLUSTER GETKEYSINSLOT", slot, 100_000)
            if keys:
                from_.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, int(WAIT * 1000), "KEYS", *keys)
        for node in (source, target, *others):
            with contextlib.closing(node.client()) as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.address])

    def node_at(self, address: str) -> ClusterNode:
        [node] = [node for node in self.nodes if node.address == address]
        return node

    def master_of_slot(self, slot: int) -> ClusterNode:
        with contextlib.closing(self.running()[0].client()) as client:
            for entry in client.execute_command("CLUSTER SLOTS"):
                if entry[0] <= slot <= entry[1]:
                    host = entry[2][0].decode() if isinstance(entry[2][0], bytes) else entry[2][0]
                    return self.node_at(f"{host}:{entry[2][1]}")
        raise AssertionError(f"slot {slot} has no master")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        for node in self.running():
            if node is not master and node.role() == "slave":
                replication = node.info("replication")
                if int(replication["master_port"]) == master.port:
                    return node
        raise AssertionError(f"{master.address} has no replica")

    def client(self) -> redis.RedisCluster:
        first = self.running()[0]
        return redis.RedisCluster(host="127.0.0.1", port=first.port, socket_timeout=WAIT)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@contextlib.contextmanager
def redis_cluster(masters: int = 3, replicas: int = 0, keep_logs: bool = False) -> Iterator[RedisCluster]:
    cluster = RedisCluster(masters, replicas, keep_logs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


def spublish(cluster: RedisCluster, channel: bytes, data: bytes, client: redis.RedisCluster | None = None) -> int:
    """SPUBLISH straight into the cluster (redis-py finds the channel's master); returns the receiver count.

    ``client``: one to reuse (making one asks the cluster for its map: about 0.1 s); None: a new one.
    """
    if client is not None:
        return int(client.spublish(channel, data))
    with contextlib.closing(cluster.client()) as new:
        return int(new.spublish(channel, data))


def publish_sentinel(cluster: RedisCluster, session: str, prefix: str = "rusty_ws",
                     client: redis.RedisCluster | None = None) -> None:
    """The sentinel of ``redis_support``, on a cluster: after everything the session's master took before it.

    A session's channels all share one slot (its tag), so one master, and one
    connection to each node: the sentinel comes after all of the session's messages
    that master took, so the nodes' publishes must have landed first
    (``publishes_landed`` in the session, or ``RedisClusterBroker.wait_sent``).
    """
    sentinel = Delivery(publisher_name="test", topic=SENTINEL, payload="end",
                        timestamp="2024-01-24T10:25:37Z", session_id=session)
    spublish(cluster, shard_channel_name(prefix, SENTINEL, session), encode_envelope("test-sentinel", sentinel), client)


def publish_across_nodes(cluster: RedisCluster, clients: dict[str, Client], publishes: list[tuple[str, str]],
                         session_of: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """``redis_support.publish_across_nodes`` on a cluster."""
    received: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
    for name, topic in publishes:
        replies = clients[name].command(encode_publish(topic, f"{topic} from {name}", publisher_name=name,
                                                       timestamp="2024-01-24T10:25:37Z",
                                                       session_id=session_of[name]))
        received[name] += [json.loads(reply) for reply in replies]
    for name, client in clients.items():  # each client published in its own session: one slot, one sender
        received[name] += [json.loads(reply) for reply in publishes_landed(client, session_of[name])]
    with contextlib.closing(cluster.client()) as client:
        for session in sorted(set(session_of.values())):
            publish_sentinel(cluster, session, client=client)
    for name, client in clients.items():
        received[name] += read_until_sentinel(client)
    return received
