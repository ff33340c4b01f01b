"""A connection admitted before the hub's shutdown began but upgraded after it took its list still gets 4200.

Before, it was left open until ``Hub.shutdown``'s timeout (5 s): in a restart
with thousands of clients reconnecting, some always fell in that window, and
the old process took seconds longer to go, which the reconnect storm then paid for.
"""

from __future__ import annotations

import threading
import time

from support import WAIT, Client, running_server


def test_a_connection_upgraded_after_shutdown_took_its_list_is_told_4200_at_once() -> None:
    with running_server() as server:
        hub = server.hub
        in_add, go_on = threading.Event(), threading.Event()  # the race's two points, held open
        real_add = hub._add

        def held_add(connection):  # runs on the connection's request thread
            in_add.set()
            assert go_on.wait(WAIT)
            real_add(connection)

        hub._add = held_add  # type: ignore[method-assign]
        shutdown_waits = threading.Event()
        real_wait = hub.wait_connections

        def observed_wait(at_most: int, timeout: float, **options: bool) -> bool:  # shutdown() calls it after its list
            shutdown_waits.set()
            return real_wait(at_most, timeout, **options)

        hub.wait_connections = observed_wait  # type: ignore[method-assign]
        got: list[tuple[int, str]] = []
        client_thread = threading.Thread(
            target=lambda: got.append(Client(server.ws_url).recv_close()), name="test-late-client")
        client_thread.start()
        assert in_add.wait(WAIT)  # admitted (its slot taken), not yet among the connections
        shutdown_took = []
        stopper = threading.Thread(target=lambda: (shutdown_took.append(time.monotonic()), hub.shutdown(10 * WAIT),
                                                   shutdown_took.append(time.monotonic())), name="test-shutdown")
        stopper.start()
        assert shutdown_waits.wait(WAIT)  # it took its list (without our connection) and waits for them
        assert not hub.accepting
        go_on.set()
        client_thread.join(WAIT)
        stopper.join(10 * WAIT)
        assert got == [(4200, "server restarting")]
        assert not stopper.is_alive()
        assert shutdown_took[1] - shutdown_took[0] < 5 * WAIT  # not its 10 * WAIT timeout
