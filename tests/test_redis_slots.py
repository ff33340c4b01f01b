"""The Redis Cluster broker's pure parts: CRC16 slots, the partition tags and their spread, names, the URL."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rusty_ws.brokers import broker_from_url
from rusty_ws.brokers.redis_codec import (
    ClusterUrl,
    session_tag,
    shard_channel_name,
    shard_control_channel,
    split_cluster_url,
)
from rusty_ws.brokers.redis_slots import (
    PARTITIONS,
    SLOTS,
    crc16,
    key_slot,
    parse_cluster_slots,
    partition_of,
    partition_slots,
    partition_tags,
    session_slot,
    tag_in,
)
from rusty_ws.exceptions import ConfigError

AWKWARD = ["a", "a:b", "{", "}", "{x}", "a{b}c", "{}", "é", "日本", "\ud800", "x" * 300, " "]


def masters_of(slots: list[int], masters: int = 3) -> Counter[int]:
    """Which of ``masters`` equal slot ranges (as ``redis-cli --cluster create`` makes them) holds each slot."""
    return Counter(slot * masters // SLOTS for slot in slots)


class TestSlots:
    def test_crc16_is_redis_cluster_s(self) -> None:
        assert crc16(b"123456789") == 0x31C3  # the check value of CRC16/XMODEM, given in the cluster spec

    def test_key_slot_matches_redis(self) -> None:
        # Values of CLUSTER KEYSLOT on Redis 7.0.
        assert key_slot(b"foo") == 12182
        assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
        assert key_slot(b"foo{}{bar}") == crc16(b"foo{}{bar}") % SLOTS  # an empty first tag: the whole name
        assert key_slot(b"foo{{bar}}zap") == crc16(b"{bar") % SLOTS
        assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")

    def test_every_partition_tag_falls_in_its_window(self) -> None:
        tags = partition_tags()
        assert len(tags) == PARTITIONS == len(set(tags))
        for index, slot in enumerate(partition_slots()):
            assert index * SLOTS // PARTITIONS <= slot < (index + 1) * SLOTS // PARTITIONS
            assert key_slot(("{" + tags[index] + "}").encode()) == slot

    def test_the_table_is_fixed(self) -> None:
        # Part of every channel and key name: it must never change between releases or nodes.
        assert partition_tags()[:4] == ("p0.239", "p1.441", "p2.174", "p3.39")
        assert partition_tags()[-1] == partition_tags(PARTITIONS)[-1]
        assert partition_tags(4) == tuple(partition_tags(4))
        assert partition_of("session-A") == 18  # CRC32, not Python's hash(): the same in every process

    def test_partitions_spread_evenly_over_masters_where_naive_tags_do_not(self) -> None:
        ours = masters_of(list(partition_slots()))
        assert sorted(ours.values()) == [85, 85, 86]
        naive = masters_of([key_slot(str(i).encode()) for i in range(PARTITIONS)])  # "{0}".."{255}"
        assert max(naive.values()) - min(naive.values()) >= 10  # 79/86/91: what we avoid
        for masters in (2, 3, 4, 5, 6, 8, 16):
            counts = masters_of(list(partition_slots()), masters)
            # Within 2: only a window that straddles two masters' ranges can go to either.
            assert max(counts.values()) - min(counts.values()) <= 2, (masters, counts)

    def test_random_sessions_spread_evenly(self) -> None:
        sessions = [f"{random.getrandbits(64):x}" for _ in range(10_000)]
        counts = masters_of([session_slot(session) for session in sessions])
        assert min(counts.values()) > 10_000 / 3 * 0.9, counts

    def test_bad_partition_counts(self) -> None:
        for bad in (0, -1, SLOTS + 1):
            with pytest.raises(ValueError):
                partition_tags(bad)

    def test_tag_in(self) -> None:
        assert key_slot(tag_in(lambda slot: slot == 77).encode()) == 77  # type: ignore[union-attr]
        assert tag_in(lambda slot: 100 <= slot < 200) in partition_tags()
        assert tag_in(lambda slot: False, tries=1000) is None
        asked = []  # a master with no slot (a dead one, once its replica took them): no search of a million names
        assert tag_in(lambda slot: asked.append(slot) is not None) is None
        assert len(asked) <= SLOTS + PARTITIONS


class TestNames:
    def test_session_tag_depends_on_the_session_only(self) -> None:
        assert session_tag("rusty_ws", "s") == session_tag("other", "s") == "{" + partition_tags()[partition_of("s")] + "}"
        for session in AWKWARD:
            assert key_slot(session_tag("rusty_ws", session).encode()) == session_slot(session)

    def test_a_pair_s_channel_is_in_its_session_s_slot_whatever_its_characters(self) -> None:
        assert shard_channel_name("rusty_ws", "T", "s") == b"rusty_ws:" + session_tag("", "s").encode() + b":1:T:s"
        for topic in AWKWARD:
            for session in AWKWARD:
                assert key_slot(shard_channel_name("rusty_ws", topic, session)) == session_slot(session)

    def test_channels_stay_unambiguous(self) -> None:
        names = {shard_channel_name("p", topic, session) for topic in AWKWARD for session in AWKWARD}
        assert len(names) == len(AWKWARD) ** 2

    def test_control_channel(self) -> None:
        assert shard_control_channel("rusty_ws", "p3.39", "host-1-abc") == b"rusty_ws:{p3.39}:node:host-1-abc"


class TestClusterUrl:
    def test_nodes_and_options(self) -> None:
        assert split_cluster_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/?channel_prefix=shop") == \
            ClusterUrl([("127.0.0.1", 7000), ("127.0.0.1", 7001)], None, None, False, "shop")
        assert split_cluster_url("rediss+cluster://user:p%40ss@h:1") == \
            ClusterUrl([("h", 1)], "user", "p@ss", True, "rusty_ws")
        assert split_cluster_url("redis+cluster://:secret@[::1]:7000/").seeds == [("::1", 7000)]

    @pytest.mark.parametrize("url", [
        "redis://h:1", "redis+cluster://", "redis+cluster://h", "redis+cluster://h:0", "redis+cluster://h:99999",
        "redis+cluster://h:1/0", "redis+cluster://h:1,/", "redis+cluster://h:x", "redis+cluster://h:1/?db=1",
        "redis+cluster://h:1/?channel_prefix=", "redis+cluster://h:1/?channel_prefix=a:b",
        "redis+cluster://h:1/?channel_prefix=a{b}",
    ])
    def test_bad_urls(self, url: str) -> None:
        with pytest.raises(ValueError):
            split_cluster_url(url)

    def test_the_factory_names_the_problem_and_masks_the_password(self) -> None:
        with pytest.raises(ConfigError) as caught:
            broker_from_url("redis+cluster://:hunter2@h:1/?channel_prefix=a{b}")
        assert "hunter2" not in str(caught.value) and "channel_prefix" in str(caught.value)


class TestSlotMap:
    def test_parse(self) -> None:
        reply = [[0, 5460, [b"127.0.0.1", 7000, b"id1"], [b"127.0.0.1", 7003, b"id4"]],
                 [5461, 16383, [b"127.0.0.1", 7001, b"id2", {}]]]
        found = parse_cluster_slots(reply)
        assert found.owners[0] == found.owners[5460] == "127.0.0.1:7000"
        assert found.owners[5461] == found.owners[16383] == "127.0.0.1:7001"
        assert found.masters == {"127.0.0.1:7000", "127.0.0.1:7001"}
        assert found.nodes == ("127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7003")
        assert found.slots_of("127.0.0.1:7000") == 5461

    def test_uncovered_slots_have_no_owner(self) -> None:
        found = parse_cluster_slots([[10, 20, ["h", 1]]])
        assert found.owners[9] == "" and found.owners[10] == "h:1" and found.slots_of("h:1") == 11

    @pytest.mark.parametrize("reply", [None, 5, [[0]], [[0, 1, []]], [[5, 1, ["h", 1]]], [[0, SLOTS, ["h", 1]]],
                                       [[0, 1, ["h", "port"]]], [[0, 1, ["", 1]]]])
    def test_garbage(self, reply: object) -> None:
        with pytest.raises(ValueError):
            parse_cluster_slots(reply)
