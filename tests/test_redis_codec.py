"""The Redis broker's pure parts (redis_codec): channel names, the envelope, the URL option."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import ClassVar

import pytest

from rusty_ws.brokers.base import ENCODED
from rusty_ws.brokers.redis_codec import (
    MAX_ENVELOPE_DEPTH,
    RUN_ENVELOPE_VERSION,
    RemoteRun,
    channel_name,
    control_channel,
    decode_envelope,
    decode_envelopes,
    decode_received,
    decode_stream_entry,
    decode_stream_run,
    encode_envelope,
    key_of_channel,
    merge_envelopes,
    own_envelope_prefix,
    own_run_header,
    pair_keys,
    publish_id_key,
    remote_deliveries,
    session_tag,
    split_url,
)
from rusty_ws.protocol import MAX_JSON_DEPTH, Delivery
from support import MS

AWKWARD = ["a", "a:b", ":", "::", "1:a", "a:1", "é", "日本", "\ud800", "x" * 300, "rusty_ws:3:a:b", " ", "*?[]"]


class TestChannelNames:
    def test_readable(self) -> None:
        assert channel_name("rusty_ws", "DetectCustomerEvent", "session-A") == \
            b"rusty_ws:{p18.103}:19:DetectCustomerEvent:session-A"

    def test_length_is_in_utf8_bytes(self) -> None:
        assert channel_name("p", "é", "s") == "p:{p11.436}:2:é:s".encode()

    def test_the_tag_is_the_sessions_only(self) -> None:
        keys = pair_keys("p", "T", "s")
        assert keys == (b"p:{p11.436}:1:T:s", b"p:{p11.436}:s:1:T:s", b"p:{p11.436}:m:1:T:s")
        assert session_tag("p", "s").encode() == b"{p11.436}" == pair_keys("p", "Other", "s").meta.split(b":")[1]
        assert publish_id_key("p", "s", "id:1") == b"p:{p11.436}:id:1:s:id:1"

    def test_a_channel_with_another_sessions_tag_is_no_key(self) -> None:
        assert key_of_channel("p", b"p:{00000000}:1:T:s") is None

    @pytest.mark.parametrize("topic,session", list(itertools.product(AWKWARD, repeat=2)))
    def test_round_trip(self, topic: str, session: str) -> None:
        assert key_of_channel("rusty_ws", channel_name("rusty_ws", topic, session)) == (topic, session)

    def test_unambiguous_for_every_pair(self) -> None:
        pairs = list(itertools.product(AWKWARD, repeat=2))
        names = {channel_name("rusty_ws", topic, session) for topic, session in pairs}
        assert len(names) == len(pairs)

    def test_colons_cannot_shift_the_split(self) -> None:
        # Plain "topic:session" would give both of these "a:b:c".
        assert channel_name("p", "a:b", "c") != channel_name("p", "a", "b:c")

    @pytest.mark.parametrize("channel", [
        b"other:1:a:b", b"rusty_ws:node:abc", b"rusty_ws:x:a:b", b"rusty_ws:5:a:b", b"rusty_ws:01:a:b",
        b"rusty_ws:1:ab", b"rusty_ws:", b"rusty_ws:2:\xff\xfe:s",
    ])
    def test_other_channels_are_no_key(self, channel: bytes) -> None:
        assert key_of_channel("rusty_ws", channel) is None

    def test_control_channel_is_never_a_pair(self) -> None:
        assert key_of_channel("rusty_ws", control_channel("rusty_ws", "node-1")) is None


def delivery(**fields: object) -> Delivery:
    base = dict(publisher_name="Client1", topic="T", payload={"n": [1, 2.5, None]},
                timestamp="2024-01-24T10:25:37Z", session_id="s")
    base.update(fields)
    return Delivery(**base)  # type: ignore[arg-type]


class TestEnvelope:
    @pytest.mark.parametrize("sent", [
        delivery(), delivery(user="alice"), delivery(payload=None), delivery(payload="日本 \ud800"),
        delivery(topic="a:b", session_id="c:d"),
    ])
    def test_round_trip(self, sent: Delivery) -> None:
        node, received = decode_envelope(encode_envelope("node-1", sent), (sent.topic, sent.session_id))
        assert node == "node-1"
        assert received == sent and received.to_dict() == sent.to_dict()

    @pytest.mark.parametrize("data", [
        b"", b"garbage", b"\xff\xfe", b"[]", b"null", b"{}", b'{"v": 2, "node": "n", "delivery": {}}',
        b'{"v": 1, "node": 5, "delivery": {}}',
        b'{"v": 1, "node": "n", "delivery": []}',
        b'{"v": 1, "node": "n", "delivery": {"topic": "T", "session_id": "other", "publisher_name": "p",'
        b' "timestamp": "t", "payload": 1}}',
        b'{"v": 1, "node": "n", "delivery": {"topic": "T", "session_id": "s", "publisher_name": 1,'
        b' "timestamp": "t", "payload": 1}}',
        b'{"v": 1, "node": "n", "delivery": {"topic": "T", "session_id": "s", "publisher_name": "p",'
        b' "timestamp": "t", "payload": 1, "user": []}}',
        b'{"v": 1, "node": "n", "delivery": {"topic": "T", "session_id": "s", "publisher_name": "p",'
        b' "timestamp": "t"}}',
        b'{"v": 1, "node": "n", "delivery": {"topic": "T", "session_id": "s", "publisher_name": "p",'
        b' "timestamp": "t", "payload": NaN}}',
        b"[" * 100_000,
    ])
    def test_refuses_what_no_node_sends(self, data: bytes) -> None:
        with pytest.raises(ValueError):
            decode_envelope(data, ("T", "s"))


class TestUrl:
    def test_default_prefix(self) -> None:
        assert split_url("redis://h:1/0") == ("redis://h:1/0", "rusty_ws")

    @pytest.mark.parametrize("url, expected", [
        ("unix:///run/redis.sock", ("unix:///run/redis.sock", "rusty_ws")),
        ("unix:///run/redis.sock?db=2&channel_prefix=shop", ("unix:///run/redis.sock?db=2", "shop")),
        ("rediss://:pw@h:6380/0?channel_prefix=shop", ("rediss://:pw@h:6380/0", "shop")),
    ])
    def test_every_scheme_keeps_its_form(self, url: str, expected: tuple[str, str]) -> None:
        # docs/configuration.md names redis://, rediss:// and unix:// (a socket path).
        assert split_url(url) == expected

    def test_prefix_option_is_removed_others_kept(self) -> None:
        assert split_url("redis://h:1/2?channel_prefix=shop&socket_timeout=3") == \
            ("redis://h:1/2?socket_timeout=3", "shop")

    @pytest.mark.parametrize("prefix", ["", "a:b"])
    def test_bad_prefix(self, prefix: str) -> None:
        with pytest.raises(ValueError):
            split_url(f"redis://h:1/0?channel_prefix={prefix}")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60_000 * MS)


class TestLazyImport:
    def test_the_hub_does_not_load_redis_until_a_redis_broker_is_asked_for(self) -> None:
        code = ("import sys; from rusty_ws import create_app; from rusty_ws.brokers import broker_from_url; "
                "broker_from_url('memory://'); create_app(); print('redis' in sys.modules)")
        assert run_python(code).stdout.split()[-1] == "False"

    def test_a_redis_url_without_the_package_says_which_extra_to_install(self) -> None:
        code = ("import sys; sys.modules['redis'] = None\n"
                "from rusty_ws.brokers import broker_from_url\n"
                "try:\n    broker_from_url('redis://127.0.0.1:1/0')\n"
                "except ValueError as exc:\n    print(exc)")  # a ConfigError
        message = run_python(code).stdout
        # Commands that work today: rusty_ws is on no index yet, so never "pip install rusty_ws[redis]".
        assert "pip install 'redis>=5'" in message and "pip install '.[redis]'" in message
        assert "rusty_ws[" not in message

    def test_a_bad_url_fails_when_the_app_is_made(self) -> None:
        from rusty_ws.brokers import broker_from_url

        with pytest.raises(ValueError):
            broker_from_url("redis://127.0.0.1:1/0?channel_prefix=a:b")
        with pytest.raises(ValueError):
            broker_from_url("kafka://127.0.0.1:1")


class TestEnvelopeLimits:
    """What a node sends always decodes; what a forger sends past the limits never does."""

    def test_size_is_checked_before_anything_is_decoded(self) -> None:
        data = encode_envelope("n", delivery(payload="x" * 1000))
        assert decode_envelope(data, ("T", "s"), max_size=len(data))[1].payload == "x" * 1000
        with pytest.raises(ValueError, match="more than the"):
            decode_envelope(data, ("T", "s"), max_size=len(data) - 1)
        with pytest.raises(ValueError, match="more than the"):
            decode_envelope(b"\xff" * 100, ("T", "s"), max_size=99)  # not even looked at

    def test_the_deepest_publish_round_trips(self) -> None:
        payload: list = []
        for _ in range(MAX_JSON_DEPTH - 2):
            payload = [payload]  # MAX_JSON_DEPTH - 1 levels: the deepest payload a publish may carry
        sent = delivery(payload=payload)
        assert decode_envelope(encode_envelope("n", sent), ("T", "s"))[1] == sent
        with pytest.raises(ValueError, match="deeper than"):
            decode_envelope(encode_envelope("n", delivery(payload=[payload])), ("T", "s"))

    def test_envelope_depth_is_one_more_than_a_command(self) -> None:
        assert MAX_ENVELOPE_DEPTH == MAX_JSON_DEPTH + 1


class TestBatchEnvelopes:
    """Version 3: what the history script publishes now, several deliveries of one pair with their offsets."""

    KEY = ("T", "s")

    @staticmethod
    def body(payload: object = 1, session: str = "s") -> bytes:
        return (b'{"publisher_name":"p","topic":"T","payload":%s,"timestamp":"t","session_id":"%s"}'
                % (str(payload).encode(), session.encode()))

    def envelope(self, items: list[bytes], epoch: bytes = b'"ab12"', version: int = 3) -> bytes:
        return b'{"v":%d,"node":"n1","epoch":%s,"items":[%s]}' % (version, epoch, b",".join(items))

    def item(self, seq: object, offset: object, body: bytes | None = None) -> bytes:
        return b'{"seq":%s,"offset":%s,"delivery":%s}' % (str(seq).encode(), str(offset).encode(), body or self.body())

    def test_each_item_is_a_delivery_with_its_offset_and_the_nodes_number(self) -> None:
        data = self.envelope([self.item(7, 5, self.body(10)), self.item(9, 6, self.body(11))])
        node, deliveries = decode_envelopes(data, self.KEY)
        assert node == "n1"
        assert [(d.payload, d.offset, d.epoch, d.extra) for d in deliveries] == [
            (10, 5, "ab12", {"node": "n1", "seq": 7}), (11, 6, "ab12", {"node": "n1", "seq": 9})]
        assert deliveries[1].encode().endswith(b',"offset":6,"epoch":"ab12"}')

    def test_one_delivery_alone_is_what_decode_envelope_takes(self) -> None:
        assert decode_envelope(self.envelope([self.item(1, 1)]), self.KEY)[1].offset == 1
        with pytest.raises(ValueError, match="2 deliveries"):
            decode_envelope(self.envelope([self.item(1, 1), self.item(2, 2)]), self.KEY)

    def test_versions_1_and_2_still_decode_to_one_delivery(self) -> None:
        sent = Delivery("p", "T", 1, "t", "s")
        assert decode_envelopes(encode_envelope("n", sent), self.KEY) == ("n", [sent])
        data = b'{"v":2,"node":"n1","seq":7,"offset":5,"epoch":"ab12","delivery":' + self.body() + b"}"
        assert [d.offset for d in decode_envelopes(data, self.KEY)[1]] == [5]

    @pytest.mark.parametrize("items", [
        [],                                                  # nothing in it
        [b"1"], [b"[]"], [b'{"seq":1,"offset":1}'],           # items that are no items
        [b'{"offset":1,"delivery":%s}' % (b'{"publisher_name":"p","topic":"T","payload":1,"timestamp":"t",'
                                          b'"session_id":"s"}')],  # no seq
        [b'{"seq":true,"offset":1,"delivery":{}}'],
        [b'{"seq":1,"offset":"1","delivery":{}}'],
        [b'{"seq":1,"offset":true,"delivery":{}}'],
        [b'{"seq":1,"offset":0,"delivery":{}}'],
    ])
    def test_odd_items_are_no_envelope(self, items: list[bytes]) -> None:
        with pytest.raises(ValueError):
            decode_envelopes(self.envelope(items), self.KEY)

    def test_offsets_must_ascend_and_every_item_be_for_the_channels_pair(self) -> None:
        for items in ([self.item(1, 2), self.item(2, 2)], [self.item(1, 3), self.item(2, 2)],
                      [self.item(1, 1), self.item(2, 2, self.body(1, session="other"))],
                      [self.item(1, 1), self.item(2, 2, self.body("1e999"))]):
            with pytest.raises(ValueError):
                decode_envelopes(self.envelope(items), self.KEY)

    @pytest.mark.parametrize("epoch", [b'""', b'"AB"', b"5", b"null", b'"' + b"a" * 65 + b'"'])
    def test_a_bad_epoch_is_no_envelope(self, epoch: bytes) -> None:
        with pytest.raises(ValueError):
            decode_envelopes(self.envelope([self.item(1, 1)], epoch=epoch), self.KEY)

    def test_an_unknown_version_is_refused_not_misread(self) -> None:
        """A node of a later release publishes version 6: this one drops it (logged by the listener)."""
        with pytest.raises(ValueError, match="envelope version 6"):
            decode_envelopes(self.envelope([self.item(1, 1)], version=6), self.KEY)
        with pytest.raises(ValueError, match="envelope version"):
            decode_envelopes(b'{"v":true,"node":"n1","delivery":' + self.body() + b"}", self.KEY)

    def test_items_carry_the_deepest_publish_and_no_deeper(self) -> None:
        payload: object = []
        for _ in range(MAX_JSON_DEPTH - 2):
            payload = [payload]
        deepest = Delivery("p", "T", payload, "t", "s").encode()
        assert decode_envelopes(self.envelope([self.item(1, 1, deepest)]), self.KEY)[1][0].payload == payload
        deeper = Delivery("p", "T", [payload], "t", "s").encode()
        with pytest.raises(ValueError, match="deeper than"):
            decode_envelopes(self.envelope([self.item(1, 1, deeper)]), self.KEY)

    def test_own_envelopes_are_known_by_their_first_bytes(self) -> None:
        sent = Delivery("p", "T", 1, "t", "s")
        assert encode_envelope("host-1-abc", sent).startswith(own_envelope_prefix("host-1-abc"))
        assert not encode_envelope("host-1-abcd", sent).startswith(own_envelope_prefix("host-1-abc"))
        assert not encode_envelope("host-1-ab", sent).startswith(own_envelope_prefix("host-1-abc"))


class TestRunEnvelopes:
    """Version 5: one run of the history script, ``first`` offset and ``seqs`` before the deliveries."""

    KEY = ("T", "s")
    PREFIX = b'{"v":5,"node":"n1",'

    body = staticmethod(TestBatchEnvelopes.body)

    def envelope(self, seqs: bytes = b"7,9", bodies: list[bytes] | None = None, first: bytes = b"5",
                 epoch: bytes = b'"ab12"') -> bytes:
        bodies = [self.body(10), self.body(11)] if bodies is None else bodies
        return b'{"v":5,"node":"n1","epoch":%s,"first":%s,"seqs":[%s],"deliveries":[%s]}' % (
            epoch, first, seqs, b",".join(bodies))

    def test_the_deliveries_take_offsets_from_first_and_their_seqs_in_order(self) -> None:
        node, deliveries = decode_envelopes(self.envelope(), self.KEY)
        assert node == "n1"
        assert [(d.payload, d.offset, d.epoch, d.extra) for d in deliveries] == [
            (10, 5, "ab12", {"node": "n1", "seq": 7}), (11, 6, "ab12", {"node": "n1", "seq": 9})]
        assert own_envelope_prefix("n1", RUN_ENVELOPE_VERSION) == self.PREFIX

    def test_the_header_is_read_without_the_deliveries(self) -> None:
        assert own_run_header(self.envelope(), self.PREFIX) == ("ab12", 5, [7, 9])
        # The deliveries are not looked at: the sending node kept them.
        assert own_run_header(self.envelope(bodies=[b"not json", b"{"]), self.PREFIX) == ("ab12", 5, [7, 9])

    @pytest.mark.parametrize("data", [
        b'{"v":5,"node":"n1","epoch":"AB","first":1,"seqs":[1],"deliveries":[{}]}',      # epoch not lower hex
        b'{"v":5,"node":"n1","epoch":"ab","first":0,"seqs":[1],"deliveries":[{}]}',      # offset 0
        b'{"v":5,"node":"n1","epoch":"ab","first":01,"seqs":[1],"deliveries":[{}]}',     # leading zero
        b'{"v":5,"node":"n1","epoch":"ab","first":1,"seqs":[],"deliveries":[{}]}',       # no seq
        b'{"v":5,"node":"n1","epoch":"ab","first":1,"seqs":[1,,2],"deliveries":[{}]}',   # an empty seq
        b'{"v":5,"node":"n1","epoch":"ab","first":1,"seqs":[1,],"deliveries":[{}]}',
        b'{"v":5,"node":"n1","epoch":"ab","first":1,"seqs":[-1],"deliveries":[{}]}',
        b'{"v":5,"node":"n1","epoch":"ab","first":9007199254740991,"seqs":[1,2],"deliveries":[{},{}]}',  # past 2**53
        b'{"v":5,"node":"n1","epoch":"ab","first":1,"seqs":[1],"deliveries":[{}]',       # cut short
        b'{"v":5,"node":"n1","first":1,"epoch":"ab","seqs":[1],"deliveries":[{}]}',      # another order
        b'{"v":5,"node":"n1", "epoch":"ab","first":1,"seqs":[1],"deliveries":[{}]}',
        b'{"v":5,"node":"n1",',
        b"",
    ])
    def test_a_header_the_script_does_not_write_is_left_to_the_decoder(self, data: bytes) -> None:
        assert own_run_header(data, self.PREFIX) is None

    def test_a_header_of_too_many_seqs_is_left_to_the_decoder(self) -> None:
        seqs = b",".join(b"%d" % n for n in range(1, 10_002))
        assert own_run_header(self.envelope(seqs=seqs, bodies=[b"{}"]), self.PREFIX) is None

    ODD: ClassVar[list[bytes]] = [
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":[7],"deliveries":[]}',
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":[7,9],"deliveries":[%s]}' % TestBatchEnvelopes.body(),
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":[true],"deliveries":[%s]}' % TestBatchEnvelopes.body(),
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":["7"],"deliveries":[%s]}' % TestBatchEnvelopes.body(),
        b'{"v":5,"node":"n1","epoch":"ab12","first":0,"seqs":[7],"deliveries":[%s]}' % TestBatchEnvelopes.body(),
        b'{"v":5,"node":"n1","epoch":"ab12","first":true,"seqs":[7],"deliveries":[%s]}' % TestBatchEnvelopes.body(),
        b'{"v":5,"node":"n1","epoch":"ab12","first":9007199254740991,"seqs":[7,8],"deliveries":[%s,%s]}' % (
            TestBatchEnvelopes.body(), TestBatchEnvelopes.body()),
        b'{"v":5,"node":"n1","epoch":"AB","first":5,"seqs":[7],"deliveries":[%s]}' % TestBatchEnvelopes.body(),
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":[7],"deliveries":[1]}',
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":[7],"deliveries":{}}',
        b'{"v":5,"node":"n1","epoch":"ab12","first":5,"seqs":[7],"deliveries":[%s]}' % TestBatchEnvelopes.body(
            session="other"),
    ]

    @pytest.mark.parametrize("data", ODD)
    def test_odd_envelopes_are_no_envelope(self, data: bytes) -> None:
        with pytest.raises(ValueError):
            decode_envelopes(data, self.KEY)

    def test_deliveries_carry_the_deepest_publish_and_no_deeper(self) -> None:
        payload: object = []
        for _ in range(MAX_JSON_DEPTH - 2):
            payload = [payload]
        deepest = Delivery("p", "T", payload, "t", "s").encode()
        assert decode_envelopes(self.envelope(b"1", [deepest]), self.KEY)[1][0].payload == payload
        deeper = Delivery("p", "T", [payload], "t", "s").encode()
        with pytest.raises(ValueError, match="deeper than"):
            decode_envelopes(self.envelope(b"1", [deeper]), self.KEY)


class TestHistoryEnvelopes:
    """Version 2: what the history script publishes, the delivery with its offset and epoch."""

    KEY = ("T", "s")
    BODY = b'{"publisher_name":"p","topic":"T","payload":1,"timestamp":"t","session_id":"s"}'

    def test_a_version_2_envelope_carries_offset_epoch_and_the_nodes_number(self) -> None:
        data = b'{"v":2,"node":"n1","seq":7,"offset":5,"epoch":"ab12","delivery":' + self.BODY + b"}"
        node, delivery = decode_envelope(data, self.KEY)
        assert node == "n1" and (delivery.offset, delivery.epoch) == (5, "ab12")
        assert delivery.extra == {"node": "n1", "seq": 7}
        assert delivery.encode().endswith(b',"offset":5,"epoch":"ab12"}')

    @pytest.mark.parametrize("position", [
        b'"offset":0,"epoch":"ab"', b'"offset":-1,"epoch":"ab"', b'"offset":"5","epoch":"ab"', b'"offset":true,"epoch":"ab"',
        b'"offset":9007199254740992,"epoch":"ab"', b'"offset":5,"epoch":""', b'"offset":5,"epoch":"AB"',
        b'"offset":5,"epoch":"a\\"b"', b'"offset":5', b'"epoch":"ab"', b'"offset":5,"epoch":"' + b"a" * 65 + b'"',
    ])
    def test_a_bad_position_is_no_envelope(self, position: bytes) -> None:
        with pytest.raises(ValueError):
            decode_envelope(b'{"v":2,"node":"n",' + position + b',"delivery":' + self.BODY + b"}", self.KEY)

    def test_stream_entries(self) -> None:
        delivery, added = decode_stream_entry([b"3-0", [b"d", self.BODY, b"t", b"1700000000000"]], self.KEY, "ab", 3)
        assert (delivery.offset, delivery.epoch, delivery.payload, added) == (3, "ab", 1, 1700000000000)

    @pytest.mark.parametrize("entry", [
        [b"4-0", [b"d", BODY, b"t", b"1"]],           # past the top
        [b"3-1", [b"d", BODY, b"t", b"1"]],           # not an id the script writes
        [b"03-0", [b"d", BODY, b"t", b"1"]], [b"0-0", [b"d", BODY, b"t", b"1"]], [b"x-0", [b"d", BODY, b"t", b"1"]],
        [b"3-0", [b"d", BODY]], [b"3-0", [b"t", b"1"]], [b"3-0", [b"d", BODY, b"t", b"soon"]],
        [b"3-0", [b"d", b"\xff", b"t", b"1"]], [b"3-0", [b"d", b"[1]", b"t", b"1"]], [b"3-0", [b"d", BODY, b"t"]],
        [b"3-0", [b"d", BODY.replace(b'"s"}', b'"other"}'), b"t", b"1"]],  # another pair's
        "3-0", [b"3-0"], None,
    ])
    def test_bad_stream_entries_are_refused(self, entry: object) -> None:
        with pytest.raises((ValueError, TypeError)):
            decode_stream_entry(entry, self.KEY, "ab", 3)


    def test_a_run_entry_holds_its_deliveries_at_the_offsets_up_to_its_id(self) -> None:
        bodies = [self.BODY.replace(b'"payload":1', b'"payload":%d' % n) for n in (5, 6, 7)]
        run, added = decode_stream_run([b"7-0", [b"d", b"[" + b",".join(bodies) + b"]", b"t", b"9"]], self.KEY, "ab", 9)
        assert [(d.offset, d.payload, d.epoch) for d in run] == [(5, 5, "ab"), (6, 6, "ab"), (7, 7, "ab")] and added == 9
        [alone], _ = decode_stream_run([b"3-0", [b"d", self.BODY, b"t", b"1"]], self.KEY, "ab", 3)
        assert alone.offset == 3  # the entries of before session 15, and a run of one now
        with pytest.raises(ValueError):
            decode_stream_entry([b"7-0", [b"d", b"[" + b",".join(bodies) + b"]", b"t", b"9"]], self.KEY, "ab", 9)

    @pytest.mark.parametrize("data", [
        b"[" + BODY + b"," + BODY + b"," + BODY + b"]",  # three deliveries under offset 2: one below 1
        b"[" + BODY + b"]", b"[]",  # a run of one is the delivery alone
        b"[" + BODY + b",1]", b"[" + BODY + b"," + BODY.replace(b'"s"}', b'"other"}') + b"]",
        b"[" + BODY + b"," + BODY, b"[" * 100_000, b"[" + b"[" * 30 + BODY + b"]" * 30 + b"," + BODY + b"]",
        b"[" + b",".join([BODY] * 20) + b"]",  # more bytes than max_size
    ])
    def test_bad_run_entries_are_refused(self, data: bytes) -> None:
        with pytest.raises(ValueError):
            decode_stream_run([b"2-0", [b"d", data, b"t", b"1"]], self.KEY, "ab", 2, max_size=1000)


class TestPlainBatchEnvelopes:
    """Version 4: consecutive publishes of one pair without history, merged by the sender into one PUBLISH."""

    KEY = ("T", "s")

    def test_merged_envelopes_decode_to_their_deliveries_in_order(self) -> None:
        sent = [Delivery("p", "T", n, "t", "s") for n in range(3)] + [Delivery("p", "T", {"é": [1]}, "t", "s", "u")]
        merged = merge_envelopes("host-1-abc", [encode_envelope("host-1-abc", d) for d in sent])
        assert merged.startswith(own_envelope_prefix("host-1-abc", 4))
        assert decode_envelopes(merged, self.KEY) == ("host-1-abc", sent)
        assert len(merged) <= 40 + len("host-1-abc") + sum(len(d.encode()) + 1 for d in sent)

    def test_only_this_nodes_envelopes_merge(self) -> None:
        with pytest.raises(ValueError):
            merge_envelopes("a", [encode_envelope("b", Delivery("p", "T", 1, "t", "s"))])

    @pytest.mark.parametrize("data", [
        b'{"v":4,"node":"n","deliveries":[]}', b'{"v":4,"node":"n","deliveries":{}}', b'{"v":4,"node":"n"}',
        b'{"v":4,"node":"n","deliveries":[1]}',
        b'{"v":4,"node":"n","deliveries":[{"publisher_name":"p","topic":"T","payload":1,"timestamp":"t",'
        b'"session_id":"other"}]}',
    ])
    def test_odd_ones_are_no_envelope(self, data: bytes) -> None:
        with pytest.raises(ValueError):
            decode_envelopes(data, self.KEY)

    def test_deliveries_carry_the_deepest_publish_and_no_deeper(self) -> None:
        payload: object = []
        for _ in range(MAX_JSON_DEPTH - 2):
            payload = [payload]
        deepest = Delivery("p", "T", payload, "t", "s")
        merged = merge_envelopes("n", [encode_envelope("n", deepest)] * 2)
        assert decode_envelopes(merged, self.KEY)[1] == [deepest, deepest]
        deeper = Delivery("p", "T", [payload], "t", "s")
        with pytest.raises(ValueError, match="deeper than"):
            decode_envelopes(merge_envelopes("n", [encode_envelope("n", deeper)]), self.KEY)


@pytest.mark.parametrize("sent", [
    Delivery("p", "T", "text", "t", "s"), Delivery("p é", "T\ud800", {"a": [1, None]}, "t", "s", "u"),
    Delivery("p", "T", "\ud800 \"x\" \\", "t", "s", None, 3, "ab"),
])
def test_an_envelope_is_the_json_of_its_parts(sent: Delivery) -> None:
    from rusty_ws.protocol import dumps_utf8

    assert encode_envelope("n \"1\"", sent) == dumps_utf8({"v": 1, "node": "n \"1\"", "delivery": sent.to_dict()})


class TestRemoteRuns:
    """Another node's version-5 envelope as a ``RemoteRun`` (``decode_received``): the same checks as
    ``decode_envelopes``, and each encoding byte for byte ``Delivery.encode()`` of what it decodes."""

    KEY = ("T", "s")

    @staticmethod
    def envelope(bodies: list[bytes], node: bytes = b"n1", first: int = 5) -> bytes:
        seqs = b",".join(b"%d" % n for n in range(len(bodies)))
        return b'{"v":5,"node":"%s","epoch":"ab12","first":%d,"seqs":[%s],"deliveries":[%s]}' % (
            node, first, seqs, b",".join(bodies))

    @pytest.mark.parametrize("key", [("T", "s"), *((text, "s") for text in AWKWARD), *(("T", text) for text in AWKWARD)])
    def test_each_encoding_is_what_the_decoded_delivery_encodes_to(self, key: tuple[str, str]) -> None:
        topic, session = key
        bodies = [Delivery(name, topic, payload, stamp, session, user).encode()
                  for name, payload, stamp, user in [
                      ("p", "plain", "t", None), ("é\ud800", "日本\ud800", "t\"", "alice"), ("p", {"n": [1.5, None]}, "t", None),
                      ("p", None, "t", "bob"), ("p", 7, "t", None), *((text, text, text, text) for text in AWKWARD)]]
        bodies.append(b'{"publisher_name":"p","topic":%s,"session_id":%s,"timestamp":"t","payload":"x","more":[1]}' % (
            json.dumps(topic).encode(), json.dumps(session).encode()))  # a field no node sends: not passed on
        data = self.envelope(bodies)
        node, run = decode_received(data, key, None, "this-node")
        assert node == "n1" and isinstance(run, RemoteRun)
        _, expected = decode_envelopes(data, key)
        assert (run.key, run.epoch, run.first) == (key, "ab12", 5)
        assert run.encodings == [Delivery(d.publisher_name, d.topic, d.payload, d.timestamp, d.session_id,
                                          d.user).encode() for d in expected]
        made = remote_deliveries(run)
        assert made == expected  # the fields, offsets and epochs (extra is not compared)
        assert [d.extra[ENCODED] for d in made] == run.encodings
        assert [d.encode() for d in made] == [d.encode() for d in expected]

    def test_this_nodes_own_and_other_versions_are_decoded_as_before(self) -> None:
        own = self.envelope([TestBatchEnvelopes.body()], node=b"this-node")
        node, deliveries = decode_received(own, self.KEY, None, "this-node")
        assert node == "this-node" and isinstance(deliveries, list) and deliveries[0].extra == {"node": "this-node",
                                                                                              "seq": 0}
        assert decode_received(self.envelope([TestBatchEnvelopes.body()]), self.KEY, None, None)[1] == \
            decode_envelopes(self.envelope([TestBatchEnvelopes.body()]), self.KEY)[1]  # no node id: deliveries
        plain = merge_envelopes("n1", [encode_envelope("n1", Delivery("p", "T", 1, "t", "s"))])
        assert isinstance(decode_received(plain, self.KEY, None, "this-node")[1], list)

    @pytest.mark.parametrize("body", [
        b'{"publisher_name":"p","topic":"T","session_id":"other","timestamp":"t","payload":"x"}',  # another pair
        b'{"publisher_name":"p","topic":"U","session_id":"s","timestamp":"t","payload":"x"}',
        b'{"publisher_name":"p","session_id":"s","timestamp":"t","payload":"x"}',  # no topic
        b'{"publisher_name":5,"topic":"T","session_id":"s","timestamp":"t","payload":"x"}',
        b'{"publisher_name":"p","topic":"T","session_id":"s","timestamp":null,"payload":"x"}',
        b'{"publisher_name":"p","topic":"T","session_id":"s","timestamp":"t","payload":"x","user":["a"]}',
        b'{"publisher_name":"p","topic":"T","session_id":"s","timestamp":"t"}',  # no payload
        b'{"publisher_name":"p","topic":"T","session_id":"s","timestamp":"t","payload":1e999}',
        b'{"publisher_name":"p","topic":"T","session_id":"s","timestamp":"t","payload":NaN}',
        b"[1]", b"1", b'"x"', b"null", b"{", b"",
    ])
    def test_one_bad_delivery_among_good_ones_refuses_the_envelope(self, body: bytes) -> None:
        data = self.envelope([TestBatchEnvelopes.body(), body, TestBatchEnvelopes.body()])
        with pytest.raises(ValueError):
            decode_envelopes(data, self.KEY)
        with pytest.raises(ValueError):
            decode_received(data, self.KEY, None, "this-node")

    def test_odd_envelopes_are_refused_as_decode_envelopes_refuses_them(self) -> None:
        for data in TestRunEnvelopes.ODD:
            with pytest.raises(ValueError):
                decode_received(data, self.KEY, None, "this-node")
        deep: object = []
        for _ in range(MAX_JSON_DEPTH):
            deep = [deep]
        deeper = Delivery("p", "T", deep, "t", "s").encode()
        with pytest.raises(ValueError, match="deeper than"):
            decode_received(self.envelope([deeper]), self.KEY, None, "this-node")
        with pytest.raises(ValueError):
            decode_received(self.envelope([TestBatchEnvelopes.body()] * 3), self.KEY, 100, "this-node")  # max_size

    def test_the_depth_is_checked_once_and_brackets_in_strings_do_not_refuse(self) -> None:
        # As many brackets as the envelope's own arrays and objects: no walk (nothing else can nest);
        # brackets inside strings: walked, and fine; a deep field anywhere: refused, in versions 4 and 5.
        deep = "[" * (MAX_ENVELOPE_DEPTH + 1) + "]" * (MAX_ENVELOPE_DEPTH + 1)
        bracketed = Delivery("p", "T", "[{" * 200, "t", "s").encode()
        for node_id in ("this-node", None):
            got = decode_received(self.envelope([bracketed] * 3), self.KEY, None, node_id)[1]
            assert len(got.encodings if isinstance(got, RemoteRun) else got) == 3
            with pytest.raises(ValueError, match="deeper than"):
                decode_received(self.envelope([TestBatchEnvelopes.body()] * 3)[:-1] + b',"x":%s}' % deep.encode(),
                                self.KEY, None, node_id)
        plain = merge_envelopes("n1", [encode_envelope("n1", Delivery("p", "T", "[{" * 200, "t", "s"))] * 3)
        assert len(decode_envelopes(plain, self.KEY)[1]) == 3
        with pytest.raises(ValueError, match="deeper than"):
            decode_envelopes(plain[:-1] + b',"x":%s}' % deep.encode(), self.KEY)
        with pytest.raises(ValueError, match="deeper than"):
            decode_envelopes(b'{"v":3,"node":"n1","epoch":"ab","items":[],"x":[%s]}' % deep.encode(), self.KEY)
