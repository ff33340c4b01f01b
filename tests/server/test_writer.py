"""The writer over real socket pairs: coalescing, partial writes, slow consumers, concurrency."""

from __future__ import annotations

import socket
import threading

import pytest

from rusty_ws.frames import FrameEvent, FrameParser, encode_frame, text_frame
from rusty_ws.server.writer import ITEM_COST, WRITE_BYTES, OutboxState, Writer
from support import MS, WAIT, FrameReader

#: How long a closing connection has to finish the close handshake.
CLOSE_TIMEOUT = 1000 * MS


@pytest.fixture
def writer():
    w = Writer(max_queued_bytes=1 << 20, close_timeout=CLOSE_TIMEOUT)
    yield w
    w.stop(WAIT)


def pair(rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    if rcvbuf:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    theirs.settimeout(WAIT)
    return ours, theirs


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    frames, decoder = [], FrameReader()
    for _ in range(1_000_000):
        if len(frames) >= count:
            return frames
        data = sock.recv(65536)
        assert data, "closed early"
        frames += [frame.payload for frame in decoder.feed(data)]
    raise AssertionError("too many reads")


def test_a_batch_leaves_in_one_write(writer: Writer) -> None:
    ours, theirs = pair()
    box = writer.attach(ours, "t")
    frames = [text_frame(f"message {i}") for i in range(50)]
    with writer.batch():
        for frame in frames:
            writer.send(frame, [box])
    assert theirs.recv(65536) == b"".join(frames)  # all 50 frames in one read: one send
    writer.release(box, WAIT)
    theirs.close()
    ours.close()


def test_partial_writes_continue_where_they_stopped(writer: Writer) -> None:
    ours, theirs = pair(rcvbuf=4096)
    box = writer.attach(ours, "t")
    big = [text_frame(bytes([65 + i % 26]) * 50_000) for i in range(20)]  # 1 MB, far past the buffers
    for frame in big:
        writer.send(frame, [box])
    received = read_frames(theirs, 20)
    assert received == [frame[4:] if len(frame) < 65540 else frame[10:] for frame in big]
    writer.release(box, WAIT)
    theirs.close()
    ours.close()



def test_a_backlog_past_write_bytes_goes_out_in_order_and_its_count_returns_to_zero(writer: Writer) -> None:
    """Many small frames, more than WRITE_BYTES, some written only in part: none lost, the bytes counted right."""
    ours, theirs = pair(rcvbuf=4096)
    box = writer.attach(ours, "t")
    frames = [text_frame(f"{i}:".encode() + b"s" * (200 + i % 97)) for i in range(3000)]  # ~770 KB
    assert sum(map(len, frames)) > 2 * WRITE_BYTES
    with writer.batch():
        for frame in frames:
            writer.send(frame, [box])
    with writer._flush_lock:  # whatever is still queued is counted as its bytes plus ITEM_COST each
        assert box.chunks and box.size == sum(len(chunk) + ITEM_COST for chunk in box.chunks) == writer.queued_bytes
    marker = text_frame(b"end")
    writer.send(marker, [box])
    received = read_frames(theirs, len(frames) + 1)
    assert received == [f"{i}:".encode() + b"s" * (200 + i % 97) for i in range(3000)] + [b"end"]
    with writer._flush_lock:  # the holder that wrote the marker has counted it out before letting go
        assert box.chunks == [] and box.size == 0 and writer.queued_bytes == 0
    writer.release(box, WAIT)
    theirs.close()
    ours.close()

def test_slow_consumer_is_cut_off_and_others_go_on() -> None:
    writer = Writer(max_queued_bytes=100_000, close_timeout=CLOSE_TIMEOUT)
    slow_ours, slow_theirs = pair(rcvbuf=4096)
    fast_ours, fast_theirs = pair()
    slow, fast = writer.attach(slow_ours, "slow"), writer.attach(fast_ours, "fast")
    frame = text_frame(b"x" * 10_000)
    for _ in range(100):  # 1 MB to each; the slow one never reads
        writer.send(frame, [slow, fast])
        assert len(read_frames(fast_theirs, 1)) == 1
    assert slow.state is OutboxState.CLOSED
    slow_theirs.settimeout(WAIT)
    data = b""
    for _ in range(10_000):
        chunk = slow_theirs.recv(65536)
        if not chunk:
            break
        data += chunk
    assert len(data) < 300_000  # what the socket buffers held, then EOF: the rest was dropped
    writer.stop(WAIT)
    for sock in (slow_ours, slow_theirs, fast_ours, fast_theirs):
        sock.close()


def test_many_threads_sending_to_one_socket_never_interleave() -> None:
    writer = Writer(max_queued_bytes=256 << 20, close_timeout=CLOSE_TIMEOUT)  # this reader never falls that far behind
    ours, theirs = pair(rcvbuf=8192)
    box = writer.attach(ours, "t")
    threads, per_thread = 8, 300

    def publish(worker: int) -> None:
        for i in range(per_thread):
            size = 10 if i % 3 else 70_000  # some frames need several writes
            writer.send(text_frame(f"{worker}:{i}:".encode() + b"p" * size), [box])

    workers = [threading.Thread(target=publish, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    received = read_frames(theirs, threads * per_thread)
    for worker in workers:
        worker.join(WAIT)
    seen: dict[int, list[int]] = {}
    for payload in received:
        worker, i, rest = payload.split(b":", 2)
        assert rest == b"p" * (10 if int(i) % 3 else 70_000)
        seen.setdefault(int(worker), []).append(int(i))
    assert seen == {w: list(range(per_thread)) for w in range(threads)}  # each in order, none lost
    writer.stop(WAIT)
    theirs.close()
    ours.close()


def test_release_then_writes_are_dropped(writer: Writer) -> None:
    ours, theirs = pair()
    box = writer.attach(ours, "t")
    writer.release(box, WAIT)
    writer.release(box, WAIT)  # idempotent
    writer.send(text_frame("late"), [box])
    assert theirs.recv(100) == b""  # shut down, nothing after
    theirs.close()
    ours.close()


def test_close_frame_follows_what_was_queued(writer: Writer) -> None:
    ours, theirs = pair()
    box = writer.attach(ours, "t")
    writer.send(text_frame("last words"), [box])
    writer.close(box, 4200, "server restarting")
    writer.send(text_frame("after close"), [box])  # dropped: nothing follows a close frame
    frames = FrameReader().feed(theirs.recv(65536))
    assert frames == [(0x81, b"last words"), (0x88, b"\x10\x68server restarting")]
    writer.release(box, WAIT)
    theirs.close()
    ours.close()


def test_stop_lets_go_of_every_socket() -> None:
    writer = Writer(max_queued_bytes=1 << 20, close_timeout=CLOSE_TIMEOUT)
    pairs = [pair() for _ in range(3)]
    for ours, _ in pairs:
        writer.attach(ours, "t")
    writer.stop(WAIT)
    writer.stop(WAIT)
    for ours, theirs in pairs:
        assert theirs.recv(10) == b""
        ours.close()
        theirs.close()
    assert not writer.running


def test_frame_parser_reads_what_the_writer_writes_when_masked() -> None:
    """Sanity of the two halves together: a server frame, masked as a client would, parses back."""
    frame = text_frame("héllo")
    masked = bytes([frame[0], frame[1] | 0x80]) + b"\0\0\0\0" + frame[2:]
    assert FrameParser(100).feed(masked) == [(FrameEvent.TEXT, "héllo")]


def test_tcp_sockets_go_out_without_nagle_delay(writer: Writer) -> None:
    """The writer coalesces by itself; Nagle's algorithm would only hold small frames back."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname(), timeout=WAIT)
        ours, _ = listener.accept()
    assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    box = writer.attach(ours, "tcp")
    assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    writer.send(text_frame("hi"), [box])
    assert FrameReader().feed(theirs.recv(100)) == [(0x81, b"hi")]
    writer.release(box, WAIT)
    theirs.close()
    ours.close()


def test_a_unix_socket_is_attached_all_the_same(writer: Writer) -> None:
    ours, theirs = pair()  # AF_UNIX: no TCP options to set
    box = writer.attach(ours, "unix")
    writer.send(text_frame("hi"), [box])
    assert FrameReader().feed(theirs.recv(100)) == [(0x81, b"hi")]
    writer.release(box, WAIT)
    theirs.close()
    ours.close()


# --------------------------------------------------------------------------- what the bounds count


def stalled_pair() -> tuple[socket.socket, socket.socket]:
    """A pair whose writing end is already full: every frame the writer gets stays in the outbox."""
    ours, theirs = pair(rcvbuf=4096)
    ours.setblocking(False)
    for size in (65536, 4096, 1):
        try:
            while True:
                ours.send(b"\0" * size)
        except BlockingIOError:
            pass
    ours.setblocking(True)
    return ours, theirs


def test_the_bound_counts_what_a_frame_costs_in_memory() -> None:
    """A 2-byte pong holds ~57 bytes of memory: counted as its length plus ITEM_COST, not 2."""
    pong = encode_frame(0xA, b"")
    cost = len(pong) + ITEM_COST
    writer = Writer(max_queued_bytes=100 * cost, close_timeout=CLOSE_TIMEOUT)
    ours, theirs = stalled_pair()
    box = writer.attach(ours, "t")
    for count in range(1, 1000):
        writer.send_to(box, pong)
        if box.state is not OutboxState.OPEN:
            break
        assert writer.queued_bytes == box.size == count * cost
    assert count == 101  # not 100 * cost / 2 = 3,300 pongs
    assert box.state is OutboxState.CLOSED and writer.queued_bytes == 0
    writer.stop(WAIT)
    theirs.close()
    ours.close()


def test_a_lone_frame_bigger_than_the_bound_goes_into_an_empty_outbox() -> None:
    writer = Writer(max_queued_bytes=10_000, close_timeout=CLOSE_TIMEOUT)
    ours, theirs = pair()
    box = writer.attach(ours, "reader")
    big = text_frame(b"b" * 100_000)
    writer.send(big, [box])  # one delivery over the bound, to a subscriber that keeps up
    assert read_frames(theirs, 1) == [b"b" * 100_000]
    assert box.state is OutboxState.OPEN
    stalled_ours, stalled_theirs = stalled_pair()
    stalled = writer.attach(stalled_ours, "stalled")
    writer.send(big, [stalled])
    assert stalled.state is OutboxState.OPEN  # alone in its outbox: let in
    writer.send(text_frame(b"more"), [stalled])
    assert stalled.state is OutboxState.CLOSED  # a second frame behind it is over the bound: 4100
    writer.stop(WAIT)
    for sock in (ours, theirs, stalled_ours, stalled_theirs):
        sock.close()


def test_past_the_total_the_outboxes_holding_the_most_are_cut_first() -> None:
    cost = len(text_frame(b"x" * 10_000)) + ITEM_COST
    writer = Writer(max_queued_bytes=100 * cost, max_total_queued_bytes=9 * cost, close_timeout=CLOSE_TIMEOUT)
    pairs = [stalled_pair() for _ in range(3)]
    big, middle, small = (writer.attach(ours, name) for (ours, _), name in zip(pairs, ("big", "middle", "small")))

    def send(*boxes: object) -> None:
        for box in boxes:
            writer.send_to(box, text_frame(b"x" * 10_000))  # a frame of its own for each: replies, replays

    send(big, middle, small)
    send(big, middle)
    send(big)
    assert writer.queued_bytes == writer.held_bytes() == 6 * cost  # 3 + 2 + 1 frames: under every bound
    send(big, middle, small)  # 4 + 3 + 2 = 9: at the total, not past it
    assert [box.state for box in (big, middle, small)] == [OutboxState.OPEN] * 3
    send(small)  # 10 frames: past the total; the biggest outbox goes
    assert [box.state for box in (big, middle, small)] == [OutboxState.CLOSED, OutboxState.OPEN, OutboxState.OPEN]
    assert writer.queued_bytes == writer.held_bytes() == middle.size + small.size == 6 * cost
    writer.stop(WAIT)
    assert writer.queued_bytes == 0
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_a_frame_shared_by_many_outboxes_counts_once_in_the_total() -> None:
    """One publish to many subscribers is one object: the budget must not cut them for it."""
    frame = text_frame(b"x" * 10_000)
    cost = len(frame) + ITEM_COST
    writer = Writer(max_queued_bytes=100 * cost, max_total_queued_bytes=12 * cost, close_timeout=CLOSE_TIMEOUT)
    pairs = [stalled_pair() for _ in range(3)]
    boxes = [writer.attach(ours, f"subscriber-{i}") for i, (ours, _) in enumerate(pairs)]
    published = [text_frame(b"x" * 10_000) for _ in range(10)]
    for frame in published:
        writer.send(frame, boxes)
    assert writer.queued_bytes == 30 * cost  # past the budget, as the sum of the outboxes
    assert writer.held_bytes() == 10 * cost + 20 * 8  # what is held: 10 frames, and two more list slots each
    assert all(box.state is OutboxState.OPEN for box in boxes)
    writer.send_to(boxes[0], text_frame(b"y" * 30_000))  # of its own: 13 frames' worth held, past 12
    assert [box.state for box in boxes] == [OutboxState.CLOSED, OutboxState.OPEN, OutboxState.OPEN]
    assert writer.held_bytes() == 10 * cost + 10 * 8
    writer.stop(WAIT)
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_batching_counts_nested_blocks_per_thread_and_ends_on_an_exception(writer: Writer) -> None:
    ours, theirs = pair()
    box = writer.attach(ours, "t")
    seen_elsewhere: list[bool] = []
    assert not writer.batching
    with pytest.raises(RuntimeError), writer.batch():
        with writer.batch():
            assert writer.batching
            writer.send(text_frame("queued in a batch"), [box])
        assert writer.batching  # the inner block ended; the outer goes on
        other = threading.Thread(target=lambda: seen_elsewhere.append(writer.batching))
        other.start()
        other.join(WAIT)
        raise RuntimeError("the block fails")
    assert seen_elsewhere == [False]  # another thread is never inside this thread's batch
    assert not writer.batching
    assert read_frames(theirs, 1) == [b"queued in a batch"]  # written when the failing block ended
    writer.release(box, WAIT)
    theirs.close()
    ours.close()
