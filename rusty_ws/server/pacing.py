"""How long the accept loop asks a WebSocket handshake it turns away to wait: ``_Pacer`` (``Retry-After``).

Split out of the server because it is arithmetic on counts and times, with no
socket in it: the accept loop (``hub_server.HubServer``) tells it what it
admitted and asks it for each ``Retry-After``; the tests drive it by hand. Why
it measures what it measures is in ``_Pacer``'s docstring and
docs/performance.md, "Reconnect storm, session 14".
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Callable

#: One line a second while the accept loop admits or turns away handshakes, at DEBUG (``_Pacer``).
pacing_logger = logging.getLogger("rusty_ws.server.pacing")

#: Handshakes per second ``_Pacer`` never guesses below, whatever it measured.
MIN_PACED_RATE = 50
#: The longest Retry-After ``_Pacer`` names, in seconds.
MAX_RETRY_AFTER = 60
#: Saturated seconds whose best is ``_Pacer``'s rate: one second alone (a collection in it) misled it.
RATE_SAMPLES = 3
#: Handshakes' worth of the hub's time one turned away takes (accept, peek, 503, shutdown, close on the
#: accept thread, each letting go of the interpreter lock): its CPU is 0.15 of a handshake's and its
#: subscription's (60-65 against 400-435 µs, one at a time), and in storms a second's admissions fell by
#: 0.21 for each turned away (least squares over 90 saturated seconds of 6 storms; docs/performance.md,
#: "Reconnect storm, session 14").
TURN_AWAY_COST = 0.2
#: Saturated seconds whose median is the rate told to the hub for its 4200's window (``on_measure``).
WINDOW_SAMPLES = 30


class _Pacer:
    """How long a WebSocket handshake turned away by the accept loop is asked to wait (``Retry-After``).

    Two parts, both measured at the hub rather than promised:

    - **The rate** the hub gets through handshakes: over each whole second that
      began and ended with requests waiting (the hub saturated), the handshakes
      admitted less the growth of those under way, i.e. the handshakes it
      finished, plus ``TURN_AWAY_COST`` for each it turned away (the time that
      took is the hub's when those clients come back); the best of the last
      ``RATE_SAMPLES`` such seconds, the guess (``RUSTY_WS_RECONNECT_RATE``)
      counting as one until they are measured. No fixed floor but
      ``MIN_PACED_RATE``: a floor above what the hub sustains (1500 on a machine
      that took 400 a second) sent the turned-away back faster than they could be
      admitted, and each was turned away two or three times (21,000 503s for a
      storm of 10,000 clients). The best, not one second alone nor the mean: a
      client sent back too early costs the hub a fifth of a handshake to turn away
      again, one sent too late keeps the storm going while the hub has room; the
      first second of a new hub, with a collection of 0.4 s in it, measured 53 and
      sent 3,000 clients a minute away from a hub that then did 600-1,400 a second,
      and a mean over a starved stretch sent clients 20-27 s away from a hub that
      did 700 a second two seconds later (docs/performance.md, "Reconnect storm,
      session 14").
    - **The schedule**: a client turned away is given the next slot of a queue
      served at that rate, behind everything the hub already has to get through
      (the accept queue, what a drain holds, the handshakes under way) and behind
      every client told before it (``_tail``, rescaled when the rate changes).
      ``Retry-After`` is that slot's distance, rounded down: the client adds up to
      a second of its own jitter (docs/protocol.md, "Reconnect storms"), so it
      comes back within the second after its slot, when the hub has room for it,
      not before (turned away again) and not long after (the hub idle meanwhile).

    Used by the accept thread only: no lock. ``load`` says ``(waiting, under way)``
    now; it is called at most once a second. ``on_measure`` is given, at each new
    measure, the median of the last ``WINDOW_SAMPLES`` saturated seconds (the guess not
    among them): the hub keeps it for its 4200's window (``Hub.reconnect_rate``). Not the
    best of three as for ``Retry-After``: the window's rate is what the next hub will do,
    in a storm and from a cold start, and a second better than most was not that. A
    hub's best second during the clients' first connect (2,467 a second at a quiet
    moment) made a 4.1 s window for a new hub that did 900-1,000 while 10,000 came:
    its queue passed what it holds and it turned thousands away, at a fifth of a
    handshake each, with 4-7 s waits (docs/performance.md, "Reconnect storm, the first
    run, session 15"). A window too short costs that; one a little long costs its
    excess for the last client only.
    """

    def __init__(self, guess: int, load: Callable[[], tuple[int, int]],
                 on_measure: Callable[[float], None] | None = None) -> None:
        self.rate = float(max(MIN_PACED_RATE, guess))
        self.measured = False    # whether ``rate`` is a measure yet, not the guess
        self._samples: deque[float] = deque([self.rate], maxlen=RATE_SAMPLES)
        self._window_samples: deque[float] = deque(maxlen=WINDOW_SAMPLES)  # measured seconds only, no guess
        self._load = load
        self._on_measure = on_measure  # told each new measure (the hub's ``handshake_rate``)
        self._second = -1        # the whole second of monotonic time the counts below run from (-1: none yet)
        self._whole = False      # ... and whether they run from its start (not from the pacer's first call)
        self._admitted = 0       # handshakes admitted since then
        self._turned_away = 0    # ... and turned away (for the log line)
        self._reasons: dict[str, int] = {}  # ... of those, by the bound that turned them away (the log line)
        self._waits: dict[int, int] = {}    # ... and by the Retry-After they were given (the log line)
        self._refused = 0        # ... and refused past RUSTY_WS_MAX_PENDING_REQUESTS (no Retry-After of ours)
        self._saturated = False  # requests were waiting when that second began
        self._under_way = 0      # ... and this many handshakes were under way
        self._tail = 0.0         # monotonic time by which every client told so far has had its slot

    @property
    def window_rate(self) -> float | None:
        """The median of the saturated seconds measured (the last ``WINDOW_SAMPLES``), None before any:
        what the hub's 4200 window assumes the next hub will do (``on_measure``)."""
        return statistics.median(self._window_samples) if self._window_samples else None

    def admitted(self, now: float) -> None:
        self._tick(now)
        self._admitted += 1

    def refused(self, now: float) -> None:
        """A socket refused past ``RUSTY_WS_MAX_PENDING_REQUESTS`` (counted for the log line only)."""
        self._tick(now)
        self._refused += 1

    def retry_after(self, now: float, ahead: int, reason: str = "handshakes") -> int:
        """Seconds (1 to ``MAX_RETRY_AFTER``) the next client turned away is asked to wait.

        ``ahead``: what the hub has to get through before that client's turn (waiting
        in its queues and under way); ``reason``: the bound that turned it away (the log line)."""
        self._tick(now)
        self._turned_away += 1
        slot = max(self._tail, now + ahead / self.rate)
        self._tail = slot + 1.0 / self.rate
        wait = min(MAX_RETRY_AFTER, max(1, int(slot - now + 1e-6)))  # (slots add up 1/rate at a time)
        self._reasons[reason] = self._reasons.get(reason, 0) + 1
        self._waits[wait] = self._waits.get(wait, 0) + 1
        return wait

    def _tick(self, now: float) -> None:
        second = int(now)
        if second == self._second:
            return
        waiting, under_way = self._load()
        if self._whole and self._saturated and waiting:
            finished = max(0, self._admitted - (under_way - self._under_way))
            # What turning away took is capacity the clients told to come back will find free.
            capacity = finished + TURN_AWAY_COST * self._turned_away
            sample = max(float(MIN_PACED_RATE), capacity / (second - self._second))
            self._samples.append(sample)
            self._window_samples.append(sample)
            rate = max(self._samples)
            if self._tail > now:  # the clients told so far keep their places: their distance, at the new rate
                self._tail = now + (self._tail - now) * self.rate / rate
            self.rate, self.measured = rate, True
            if self._on_measure is not None:
                self._on_measure(statistics.median(self._window_samples))
        if (self._admitted or self._turned_away or self._refused) and pacing_logger.isEnabledFor(logging.DEBUG):
            pacing_logger.debug(
                "second %d: %d admitted, %d turned away; %d waiting, %d under way; %.0f a second%s "
                "(the 4200 window's %s); the last told %.1fs ahead; turned away by %s; Retry-After %s; "
                "%d refused (pending requests)",
                self._second, self._admitted, self._turned_away, waiting, under_way,
                self.rate, "" if self.measured else " (RUSTY_WS_RECONNECT_RATE)",
                "-" if not self._window_samples else f"{statistics.median(self._window_samples):.0f}",
                max(0.0, self._tail - now),
                _counts(self._reasons), _counts(self._waits), self._refused)
        self._whole = self._second >= 0
        self._second, self._admitted, self._turned_away, self._refused = second, 0, 0, 0
        self._reasons, self._waits = {}, {}
        self._saturated, self._under_way = waiting > 0, under_way


def _counts(counts: dict) -> str:
    """``{key: count}`` as ``key x count, ...`` in the keys' order, for the pacing log line ("-": none)."""
    return ", ".join(f"{key} x{count}" for key, count in sorted(counts.items())) or "-"
