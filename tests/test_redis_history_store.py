"""RedisHistory's bookkeeping of this node's own publishes: a fallback and a late channel copy never both count.

The sender is replaced by a recorder, so each reply (or failure) is handed back
exactly when the test says: the orders that a real Redis only shows under a
well-timed kill. Everything Redis does is tested against real servers in
tests/server/test_redis_history.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from rusty_ws.brokers.redis_codec import decode_envelope
from rusty_ws.brokers.redis_history import UNSENT_LOG_EVERY, RedisHistory, Route
from rusty_ws.brokers.redis_sender import SETTLED
from rusty_ws.log_throttle import LogThrottle
from rusty_ws.protocol import Delivery


class RecordingSender:
    def __init__(self) -> None:
        self.commands: list[tuple[tuple[Any, ...], Any]] = []
        self.written = 0  # commands merged as the sender's thread does before writing (``written``)

    def script_load(self, source: str) -> str:
        return "0" * 40

    def submit(self, args: tuple[Any, ...], on_reply: Any = None, size: int | None = None) -> None:
        """Records the command and what the sender would call with its reply: without ``on_reply``,
        a ``Mergeable``'s ``answer`` (``RedisSender._answer``)."""
        assert size is None or size == args.size  # what the sender would have read
        self.commands.append((args, args.answer if on_reply is None else on_reply))


def store(direct: bool = True) -> tuple[RedisHistory, RecordingSender, list[Delivery]]:
    """A history whose sender is ``RecordingSender``: given as ``submit_for`` (one Redis: a publish
    without id that nobody waits for goes without callback) or, not ``direct``, only through the
    route (a cluster's: a callback for every command)."""
    sender, delivered = RecordingSender(), []
    history = RedisHistory(node_id=lambda: "node-1", route=lambda session_id: Route(None, sender.submit, True),
                           deliver=delivered.append,
                           prefix="rusty_ws", size=10, ttl=60, window=60, max_envelope_size=None,
                           submit_for=(lambda session_id: sender.submit) if direct else None)
    return history, sender, delivered


def published(seq: int, node: str = "node-1") -> Delivery:
    """The channel's copy of a publish, as the listener decodes it."""
    body = b'{"publisher_name":"p","topic":"T","payload":1,"timestamp":"t","session_id":"s"}'
    data = b'{"v":2,"node":"%s","seq":%d,"offset":1,"epoch":"ab","delivery":%s}' % (node.encode(), seq, body)
    return decode_envelope(data, ("T", "s"))[1]


DELIVERY = Delivery(publisher_name="p", topic="T", payload=1, timestamp="t", session_id="s")
LOST = ConnectionError("Redis connection lost: reset")


@pytest.mark.parametrize("direct", [True, False], ids=["sender", "route"])
def test_the_channels_copy_first_then_a_failure_is_not_delivered_again(direct: bool) -> None:
    history, sender, delivered = store(direct)
    history.publish(DELIVERY, None, None)
    written(sender)  # in flight (with one Redis: from the sender's merge, before the write)
    [(args, on_reply)] = sender.commands
    assert history.arrived(published(args[-1])) is True  # Redis ran it: delivered from the channel
    on_reply(LOST)  # ...and then the sender lost the connection before the reply
    assert delivered == []


@pytest.mark.parametrize("direct", [True, False], ids=["sender", "route"])
def test_a_fallback_first_drops_the_channels_late_copy(direct: bool) -> None:
    history, sender, delivered = store(direct)
    history.publish(DELIVERY, None, None)
    written(sender)
    [(args, on_reply)] = sender.commands
    on_reply(LOST)
    assert delivered == [DELIVERY]  # local delivery goes on, without offset
    assert history.arrived(published(args[-1])) is False  # Redis ran it after all: not a second time
    assert history.arrived(published(args[-1])) is True  # forgotten once matched


def test_a_publish_without_id_goes_without_callback_to_the_sender_and_with_one_through_a_route() -> None:
    from rusty_ws.brokers.redis_sender import SETTLED

    history, _, delivered = store(direct=True)
    submitted: list[Any] = []
    history._submit_for = lambda session_id: lambda *args: submitted.append(args)
    history.publish(DELIVERY, None, None)
    [(command, on_reply, size)] = submitted  # no on_reply: the sender calls the command's kind's answer
    assert on_reply is None and size == command.size  # its size given: no property read in the sender's submit
    history, sender, delivered = store(direct=False)
    history.publish(DELIVERY, None, None)
    [(_, on_reply)] = sender.commands
    assert on_reply is not None and on_reply(SETTLED) is None and len(history._in_flight) == 1  # settled by its run
    on_reply([0, b"ab", 3])  # its reply alone
    assert len(history._in_flight) == 0 and delivered == []


def test_a_bare_publish_to_one_redis_is_in_flight_from_its_runs_merge_not_from_when_it_is_made() -> None:
    history, sender, delivered = store()
    sent = Delivery("p", "T", {"n": [1, "é"]}, "t", "s", "alice")
    history.publish(sent, None, None)
    assert not history._in_flight  # nothing on the publishing thread, no lock taken
    written(sender)
    [(args, on_reply)] = sender.commands
    assert list(history._in_flight) == [args[-1]]
    on_reply(LOST)
    assert delivered == [sent]  # made again from its encoding
    history.publish(sent, None, None)  # failed before any write (a stopped sender, Redis unreachable)
    sender.commands.pop()[1](LOST)
    assert delivered == [sent, sent]


def test_what_is_in_flight_is_bounded_the_oldest_going_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from rusty_ws.brokers import redis_history

    monkeypatch.setattr(redis_history, "MAX_IN_FLIGHT", 32)
    history, sender, delivered = store()
    for _ in range(100):  # each delivered here for want of Redis, remembered as such
        history.publish(DELIVERY, None, None)
        written(sender)
        sender.commands[-1][1](LOST)
    seqs = [args[-1] for args, _ in sender.commands]
    assert len(delivered) == 100 and 30 <= len(history._in_flight) <= 32
    assert list(history._in_flight) == seqs[-len(history._in_flight):]  # the newest stay
    assert history.arrived(published(seqs[-1])) is False and history.arrived(published(seqs[0])) is True


def test_a_fallback_whose_state_was_dropped_is_made_again_from_its_encoding() -> None:
    history, sender, delivered = store()
    sent = Delivery("p", "T", {"n": [1, "é"]}, "t", "s", "alice")
    history.publish(sent, None, None)
    [(_, on_reply)] = sender.commands
    history._in_flight.clear()  # as past MAX_IN_FLIGHT
    on_reply(LOST)
    assert delivered == [sent]


def test_other_nodes_publishes_always_arrive() -> None:
    history, sender, _ = store()
    history.publish(DELIVERY, None, None)
    [(args, on_reply)] = sender.commands
    on_reply(LOST)
    assert history.arrived(published(args[-1], "node-2")) is True  # the same number, another node


def test_a_publish_with_an_id_never_falls_back() -> None:
    history, sender, delivered = store()
    answers: list[Any] = []
    history.publish(DELIVERY, "id-1", answers.append)
    [(_, on_reply)] = sender.commands
    on_reply(LOST)
    assert delivered == [] and len(answers) == 1 and isinstance(answers[0], Exception)


def test_an_answer_of_another_shape_is_unavailable_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    history, sender, _ = store()
    answers: list[Any] = []
    history.publish(DELIVERY, "id-2", answers.append)
    [(_, on_reply)] = sender.commands
    on_reply([b"new", b"not a position", 0])
    assert isinstance(answers[0], Exception) and "no rusty_ws script returns" in str(answers[0])
    assert "dropped what Redis answered" in caplog.text


# --------------------------------------------------------------------------- a merged run's reply

def answer_as_the_sender_does(sender: RecordingSender, reply: Any) -> list[Any]:
    """Merge what was submitted into one run (``_coalesce``), split ``reply`` (``_split``) and hand
    each publish its part, as the sender's thread does; returns the parts."""
    from rusty_ws.brokers.redis_sender import _coalesce, _split

    batch = [(args, on_reply, 0) for args, on_reply in sender.commands]
    commands, spans = _coalesce(batch)
    assert len(commands) == 1  # one run of the script
    parts = _split(spans, [reply])
    for (_, on_reply, _), part in zip(batch, parts):
        on_reply(part)
    return parts


def test_a_runs_publishes_without_id_are_settled_together_and_those_with_one_answered_each() -> None:
    history, sender, delivered = keeping()
    answers: list[Any] = []
    history.publish(DELIVERY, None, None)
    history.publish(DELIVERY, "id-1", answers.append)
    history.publish(DELIVERY, None, answers.append)  # no id, but someone waits for its position
    history.publish(DELIVERY, "id-2", answers.append)
    seqs = [args[-1] for args, _ in sender.commands]
    merged = sender.commands[0][0].merge([args for args, _ in sender.commands])[0]
    assert merged[2] == 4 and merged[3 + 4 + 4] == 4  # meta, stream, two id keys; n = 4 after the pair's four
    # Redis' answer: new from offset 7 on, but the second publish's id was seen before (at 2).
    parts = answer_as_the_sender_does(sender, [0, b"ab12", 7, 2, b"2:ab12"])
    # Settled with the run: nothing to call for the first (nobody waits), the position handed on for the third.
    assert parts[0] is SETTLED and parts[2] == ("ab12", 8)
    assert [(a.position.offset, a.position.epoch, a.repeat) for a in answers] == [(2, "ab12", True), (8, "ab12", False),
                                                                                  (9, "ab12", False)]
    assert len(history._in_flight) == 0 and delivered == []
    assert all(entry[2] for entry in history._kept.values())  # answered: swept if their envelope never comes
    # The repeat's envelope never comes: not kept; the bare one of a run mixed with others is not kept
    # either (the run's envelope is decoded).
    assert sorted(history._kept) == [seqs[2], seqs[3]] and not history._kept_runs


def test_a_runs_answer_of_another_shape_fails_each_of_its_publishes(caplog: pytest.LogCaptureFixture) -> None:
    history, sender, delivered = store()
    answers: list[Any] = []
    history.publish(DELIVERY, None, None)
    history.publish(DELIVERY, "id-1", answers.append)
    for reply in ([0, b"ab", 7, 1], [1], "OK"):
        answer_as_the_sender_does(sender, reply)
        assert len(answers) == 1 and "no rusty_ws script returns" in str(answers.pop())
        assert delivered == [DELIVERY]  # the one without id: here only, without offset
        delivered.clear()
        history._in_flight.clear()
    assert "dropped what Redis answered" in caplog.text
    # An epoch or offsets no script gives: the one waiting for its position is told; the other's
    # position is not needed (the listener delivers it with the channel's), as when it runs alone.
    for reply in ([0, b"not an epoch", 7], [0, b"ab", 0], [0, b"ab", -3]):
        answer_as_the_sender_does(sender, reply)
        assert len(answers) == 1 and "no rusty_ws script returns" in str(answers.pop()) and delivered == []


def test_the_settings_are_in_the_script_and_each_configuration_has_its_own() -> None:
    def history(**options: Any) -> RedisHistory:
        return RedisHistory(node_id=lambda: "node-1", route=lambda _: Route(None, lambda *_: None, True),
                            deliver=lambda _: None, prefix="rusty_ws", **{"size": 10, "ttl": 60, "window": 60,
                                                                          "max_envelope_size": None, **options})
    one, same, other = history(), history(), history(size=11)
    assert one.publish_sha == same.publish_sha != other.publish_sha
    assert "'MINID', floor" in one.publish_script
    assert "local size, most, chunk = 10, 9007199254740992, 1125899906842624" in one.publish_script
    assert "{" + "size}" not in other.publish_script
    # ARGV[6] only as the joined form's deliveries (n < 0): no setting is an argument
    publish_body = one.publish_script[one.publish_script.index("local epoch, reset, top, b = load(run)"):]
    assert publish_body.count("ARGV[6]") == 1 and "joined = -n, 0, ARGV[6]" in publish_body
    with pytest.raises(ValueError):
        history(size=0)


# --------------------------------------------------------------------------- this node's own envelopes (take_own)

PREFIX = b'{"v":5,"node":"node-1",'


def keeping(keeps: bool = True, direct: bool = True) -> tuple[RedisHistory, RecordingSender, list[Delivery]]:
    sender, delivered = RecordingSender(), []
    history = RedisHistory(node_id=lambda: "node-1", route=lambda session_id: Route(None, sender.submit, True),
                           deliver=delivered.append, prefix="rusty_ws", size=10, ttl=60, window=60,
                           max_envelope_size=None, keeps=lambda channel: keeps,
                           submit_for=(lambda session_id: sender.submit) if direct else None)
    return history, sender, delivered


def written(sender: RecordingSender) -> None:
    """What was submitted and not written yet goes through the sender's merge (``_coalesce``), as
    before its thread writes it: a history registers there each run of bare publishes it keeps."""
    from rusty_ws.brokers.redis_sender import _coalesce

    _coalesce([(args, on_reply, 0) for args, on_reply in sender.commands[sender.written:]])
    sender.written = len(sender.commands)


def own_envelope(seqs: list[int], first: int = 1, bodies: bytes = b"{}", epoch: str = "ab") -> bytes:
    """What the script publishes for this node's run (the deliveries are not read by take_own)."""
    return b'{"v":5,"node":"node-1","epoch":"%s","first":%d,"seqs":[%s],"deliveries":[%s]}' % (
        epoch.encode(), first, b",".join(b"%d" % seq for seq in seqs), bodies)


#: ``direct``: one Redis, where the sender's merge keeps a run of bare publishes whole (``_merge``);
#: a route (a cluster's), where each publish is kept as it is made.
BOTH = pytest.mark.parametrize("direct", [True, False], ids=["runs", "route"])


def kept_of(history: RedisHistory, direct: bool) -> Any:
    """What ``history`` keeps, by number: its runs (one Redis) or its publishes (a route)."""
    return history._kept_runs if direct else history._kept


@BOTH
def test_an_own_envelope_is_made_of_what_was_kept_with_its_offsets(direct: bool) -> None:
    from rusty_ws.brokers.base import ENCODED, own_deliveries
    from rusty_ws.server.shared_streams import _encoded

    history, sender, _ = keeping(direct=direct)
    sent = [Delivery("p", "T", payload, "t", "s", user) for payload, user in (("one", None), ({"n": 2}, "alice"))]
    for delivery in sent:
        history.publish(delivery, None, None)
    written(sender)
    assert len(kept_of(history, direct)) == (1 if direct else 2)  # one run, or each publish
    seqs = [args[-1] for args, _ in sender.commands]
    run = history.take_own(("T", "s"), own_envelope(seqs, first=7, epoch="ab12"), PREFIX)
    assert run is not None
    key, epoch, first, published = run
    assert (key, epoch, first) == (("T", "s"), "ab12", 7)
    assert published == [delivery.encode() for delivery in sent]
    assert not history._kept and not history._kept_runs and history._kept_bytes == 0
    got = own_deliveries(run)
    assert [(d.payload, d.user, d.offset, d.epoch) for d in got] == [("one", None, 7, "ab12"), ({"n": 2}, "alice", 8, "ab12")]
    for delivery in got:  # the hub's frame: the kept encoding with the position spliced in, as encode() makes it
        assert ENCODED in delivery.extra and _encoded(delivery) == delivery.encode()
    assert history.take_own(("T", "s"), own_envelope(seqs), PREFIX) is None  # taken once: a copy is decoded


@BOTH
def test_a_publish_of_a_run_delivered_here_already_is_skipped_with_its_offset(direct: bool) -> None:
    from rusty_ws.brokers import redis_history
    from rusty_ws.brokers.base import own_deliveries

    history, sender, _ = keeping(direct=direct)
    for _ in range(3):
        history.publish(DELIVERY, None, None)
    written(sender)
    seqs = [args[-1] for args, _ in sender.commands]
    history._in_flight[seqs[1]] = redis_history._FELL_BACK  # delivered here when Redis seemed not to take it
    run = history.take_own(("T", "s"), own_envelope(seqs, first=4), PREFIX)
    assert run is not None and run[3][1] is None and None not in (run[3][0], run[3][2])
    assert [d.offset for d in own_deliveries(run)] == [4, 6]
    assert seqs[1] not in history._in_flight  # matched: forgotten
    assert all(history._in_flight[seq] == redis_history._ARRIVED for seq in (seqs[0], seqs[2]))


def test_what_was_not_kept_is_left_to_the_decoder() -> None:
    history, sender, _ = keeping(keeps=False)  # the listener did not listen to the channel
    history.publish(DELIVERY, None, None)
    written(sender)
    [(args, _)] = sender.commands
    assert history.take_own(("T", "s"), own_envelope([args[-1]]), PREFIX) is None
    assert history.arrived(published(args[-1])) is True  # ...which delivers it, once


@BOTH
def test_an_envelope_naming_a_kept_publish_of_another_pair_is_left_to_the_decoder(direct: bool) -> None:
    history, sender, _ = keeping(direct=direct)
    history.publish(DELIVERY, None, None)
    written(sender)
    [(args, _)] = sender.commands
    assert history.take_own(("T", "other"), own_envelope([args[-1]]), PREFIX) is None


@pytest.mark.parametrize("data", [
    b'{"v":5,"node":"node-1","epoch":"ab","first":1,"seqs":[1,1],"deliveries":[{},{}]}',  # a seq twice
    b'{"v":5,"node":"node-1","epoch":"ab","first":1,"seqs":[1,99],"deliveries":[{},{}]}',  # one never sent
    b'{"v":5,"node":"node-1","epoch":"AB","first":1,"seqs":[1],"deliveries":[{}]}',
    b'{"v":5,"node":"node-1","epoch":"ab","first":1,"seqs":[1],"deliveries":[{}]',
    b'{"v":5,"node":"node-1",' + b"x" * 100_000,
])
@BOTH
def test_a_header_that_does_not_match_what_was_kept_is_left_to_the_decoder(data: bytes, direct: bool) -> None:
    history, sender, _ = keeping(direct=direct)
    history.publish(DELIVERY, None, None)  # seq 1
    written(sender)
    assert history.take_own(("T", "s"), data, PREFIX) is None


@BOTH
def test_a_publish_delivered_here_for_want_of_redis_is_not_delivered_again_from_its_envelope(direct: bool) -> None:
    history, sender, delivered = keeping(direct=direct)
    history.publish(DELIVERY, None, None)
    written(sender)
    [(args, on_reply)] = sender.commands
    on_reply(LOST)
    assert not kept_of(history, direct)
    assert delivered == [DELIVERY]  # local delivery, without offset; no longer kept
    assert history.take_own(("T", "s"), own_envelope([args[-1]]), PREFIX) is None
    assert history.arrived(published(args[-1])) is False  # the decoder's copy is dropped: once in all


@BOTH
def test_an_envelope_first_then_a_failure_is_delivered_once(direct: bool) -> None:
    history, sender, delivered = keeping(direct=direct)
    history.publish(DELIVERY, None, None)
    written(sender)
    [(args, on_reply)] = sender.commands
    got = history.take_own(("T", "s"), own_envelope([args[-1]]), PREFIX)
    assert got is not None and len(got[3]) == 1 and got[3][0] is not None  # Redis ran it: delivered from the channel
    on_reply(LOST)  # ...then the sender lost the connection before the reply
    assert delivered == []


def test_a_repeat_or_a_failure_is_kept_no_longer() -> None:
    history, sender, _ = keeping()
    history.publish(DELIVERY, "id-1", lambda result: None)
    history.publish(DELIVERY, "id-2", lambda result: None)
    (_, on_first), (_, on_second) = sender.commands
    on_first([0, b"ab", 0, 1, b"3:ab"])  # a repeat: not published, its envelope never comes
    on_second(LOST)
    assert len(history._kept) == 0 and history._kept_bytes == 0


@BOTH
def test_what_is_kept_is_bounded_in_count_and_bytes(monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    from rusty_ws.brokers import redis_history

    monkeypatch.setattr(redis_history, "MAX_KEPT", 5)
    history, sender, _ = keeping(direct=direct)
    for _ in range(8):
        history.publish(DELIVERY, None, None)
        written(sender)  # each its own run
    seqs = [args[-1] for args, _ in sender.commands]
    assert list(kept_of(history, direct)) == seqs[3:]  # the oldest went
    assert history.take_own(("T", "s"), own_envelope(seqs[:1]), PREFIX) is None
    monkeypatch.setattr(redis_history, "MAX_KEPT_BYTES", 3 * len(DELIVERY.encode()))
    history.publish(DELIVERY, None, None)
    written(sender)
    assert len(kept_of(history, direct)) == 3 and history._kept_bytes == 3 * len(DELIVERY.encode())


@BOTH
def test_answered_publishes_older_than_an_arriving_envelope_are_dropped(direct: bool) -> None:
    """A channel's envelopes come in the order their scripts ran: an older answered one not back by now never will."""
    history, sender, _ = keeping(direct=direct)
    for _ in range(3):
        history.publish(DELIVERY, None, None)
        written(sender)  # each its own run
    (_, on_a), (b, _), (c, _) = sender.commands
    on_a([0, b"ab", 1])  # answered, but its envelope was lost (say an unsubscribe raced it)
    assert history.take_own(("T", "s"), own_envelope([b[-1]], first=2), PREFIX) is not None
    assert list(kept_of(history, direct)) == [c[-1]]  # a dropped; c, not answered yet, stays


@BOTH
def test_a_lost_listener_connection_forgets_what_was_kept(direct: bool) -> None:
    history, sender, _ = keeping(direct=direct)
    history.publish(DELIVERY, None, None)
    written(sender)
    assert len(kept_of(history, direct)) == 1
    history.forget_kept()
    assert len(kept_of(history, direct)) == 0 and history._kept_bytes == 0


# --------------------------------------------------------------------------- runs kept whole (one Redis)

def test_a_bare_publish_is_kept_with_its_run_when_the_sender_merges_it_not_when_it_is_made() -> None:
    history, sender, _ = keeping()
    for _ in range(3):
        history.publish(DELIVERY, None, None)
    assert not history._kept and not history._kept_runs  # nothing on the publishing thread
    written(sender)
    seqs = [args[-1] for args, _ in sender.commands]
    [(first, [commands, answered, nbytes, text])] = history._kept_runs.items()
    assert first == seqs[0] and len(commands) == 3 and answered is False
    assert nbytes == history._kept_bytes == 3 * len(DELIVERY.encode()) and history._kept_run_publishes == 3
    assert text == b",".join(b"%d" % seq for seq in seqs)  # as the script spells them in the envelope


@pytest.mark.parametrize("seqs", [
    lambda seqs: seqs[:2],  # fewer than were sent
    lambda seqs: [seqs[0], seqs[2], seqs[1]],  # another order
    lambda seqs: [*seqs, seqs[2] + 1],  # one more
])
def test_an_envelope_whose_numbers_are_not_the_runs_is_left_to_the_decoder(seqs: Any) -> None:
    history, sender, _ = keeping()
    for _ in range(3):
        history.publish(DELIVERY, None, None)
    written(sender)
    sent = [args[-1] for args, _ in sender.commands]
    assert history.take_own(("T", "s"), own_envelope(seqs(sent)), PREFIX) is None
    assert not history._kept_runs and history._kept_bytes == 0 and history._kept_run_publishes == 0
    assert all(history.arrived(published(seq)) for seq in sent)  # ...which delivers each, once


def test_a_run_mixing_bare_publishes_with_others_is_not_kept_whole() -> None:
    history, sender, _ = keeping()
    history.publish(DELIVERY, None, None)
    history.publish(DELIVERY, "id-1", lambda result: None)
    written(sender)
    assert not history._kept_runs and list(history._kept) == [sender.commands[1][0][-1]]
    seqs = [args[-1] for args, _ in sender.commands]
    assert history.take_own(("T", "s"), own_envelope(seqs), PREFIX) is None  # decoded, as another node's


def test_a_runs_failure_drops_the_run_and_delivers_each_here_once() -> None:
    from rusty_ws.brokers.redis_sender import _coalesce, _split

    history, sender, delivered = keeping()
    for _ in range(3):
        history.publish(DELIVERY, None, None)
    batch = [(args, on_reply, 0) for args, on_reply in sender.commands]
    _, spans = _coalesce(batch)  # merged and kept...
    assert len(history._kept_runs) == 1
    for (_, on_reply, _), part in zip(batch, _split(spans, [LOST])):  # ...then the connection broke
        on_reply(part)
    assert delivered == [DELIVERY] * 3 and not history._kept_runs and history._kept_bytes == 0
    seqs = [args[-1] for args, _ in sender.commands]
    assert history.take_own(("T", "s"), own_envelope(seqs), PREFIX) is None
    assert not any(history.arrived(published(seq)) for seq in seqs)  # Redis ran it after all: not again


def test_publishes_redis_did_not_take_are_logged_once_a_while_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    """A failover fails thousands of publishes while other shards take theirs: one line, not one each."""
    history, sender, delivered = store()
    clock = [0.0]
    history._log_unsent = LogThrottle(UNSENT_LOG_EVERY, lambda: clock[0])
    with caplog.at_level("WARNING", logger="rusty_ws.server"):
        for _ in range(1000):
            history.publish(DELIVERY, None, None)
            sender.commands.pop()[1](LOST)
        clock[0] += UNSENT_LOG_EVERY
        history.publish(DELIVERY, None, None)
        sender.commands.pop()[1](LOST)
    lines = [r.getMessage() for r in caplog.records if "did not take" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis did not take 1 publish(es)") and "reset" in lines[0]
    assert lines[1].startswith("Redis did not take 1000 publish(es)")
    assert len(delivered) == 1001  # each still delivered here, without offset
