"""Claim table: longest-prefix claims, exact-match cache, learning, expiry (spec 11.3, 11.4)."""

from __future__ import annotations

from vpncloud.core.table import ClaimTable
from vpncloud.core.types import Range, parse_address

P1 = ("::ffff:10.0.0.1", 3210)
P2 = ("::ffff:10.0.0.2", 3210)
P3 = ("fd00::3", 3210)


def a(text: str) -> bytes:
    return parse_address(text)


def r(text: str) -> Range:
    return Range.parse(text)


def test_empty_table_finds_nothing_and_caches_nothing() -> None:
    table = ClaimTable(300, 300)
    assert table.lookup(a("10.1.0.1"), 0) is None
    assert table.cache() == [] and table.cache_len() == 0


def test_longest_prefix_wins() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    table.set_claims(P2, [r("10.1.2.0/24")], 0)
    table.set_claims(P3, [r("0.0.0.0/0")], 0)
    assert table.lookup(a("10.1.2.3"), 0) == P2
    assert table.lookup(a("10.1.3.3"), 0) == P1
    assert table.lookup(a("192.168.0.1"), 0) == P3
    assert table.lookup(a("fd00::1"), 0) is None  # 16-byte address, only 4-byte claims


def test_first_claim_wins_on_equal_prefix() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P2, [r("10.1.0.0/16")], 0)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    assert table.lookup(a("10.1.9.9"), 0) == P2


def test_lookup_result_is_cached_with_the_earlier_expiry() -> None:
    table = ClaimTable(cache_timeout=100, claim_timeout=300)
    table.set_claims(P1, [r("10.1.0.0/16")], 10)
    assert table.lookup(a("10.1.0.5"), 50) == P1
    assert table.cache() == [(a("10.1.0.5"), P1, 150)]  # now + cache_timeout < claim expiry 310
    table2 = ClaimTable(cache_timeout=300, claim_timeout=100)
    table2.set_claims(P1, [r("10.1.0.0/16")], 10)
    table2.lookup(a("10.1.0.5"), 50)
    assert table2.cache() == [(a("10.1.0.5"), P1, 110)]  # claim expiry earlier


def test_cache_hit_wins_over_a_later_longer_claim() -> None:
    # the original does not flush other peers' cache entries when a peer adds claims
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    assert table.lookup(a("10.1.2.3"), 0) == P1
    table.set_claims(P2, [r("10.1.2.0/24")], 1)
    assert table.lookup(a("10.1.2.3"), 2) == P1
    assert table.lookup(a("10.1.2.4"), 2) == P2


def test_whole_seconds_are_compared() -> None:
    table = ClaimTable(10, 10)
    table.learn(a("10.0.0.9"), P1, 100.9)
    assert table.cache() == [(a("10.0.0.9"), P1, 110)]
    assert table.lookup(a("10.0.0.9"), 110.99) == P1  # alive while expiry >= now
    assert table.lookup(a("10.0.0.9"), 111.0) is None


def test_learning_overwrites_and_expires() -> None:
    table = ClaimTable(cache_timeout=60, claim_timeout=300)
    mac = a("02:00:00:00:00:01")
    table.learn(mac, P1, 0)
    assert table.lookup(mac, 1) == P1
    table.learn(mac, P2, 10)
    assert table.lookup(mac, 11) == P2
    table.housekeep(70)
    assert table.cache_len() == 1
    table.housekeep(71)
    assert table.cache_len() == 0
    assert table.lookup(mac, 71) is None


def test_claims_expire_unless_refreshed() -> None:
    table = ClaimTable(300, claim_timeout=100)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    table.set_claims(P2, [r("10.2.0.0/16")], 0)
    table.set_claims(P1, [r("10.1.0.0/16")], 50)  # NODE_INFO repeated the claim
    table.housekeep(101)
    assert [(c, p) for c, p, _ in table.claims()] == [(r("10.1.0.0/16"), P1)]
    assert table.claims()[0][2] == 150


def test_set_claims_replaces_and_flushes_cache_of_that_peer_only() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16"), r("10.3.0.0/16")], 0)
    table.set_claims(P2, [r("10.2.0.0/16")], 0)
    table.lookup(a("10.1.0.1"), 0)
    table.lookup(a("10.2.0.1"), 0)
    table.learn(a("10.9.0.1"), P1, 0)
    # P1 drops 10.3/16 (the stale one comes AFTER the kept one: the quirk case) and adds 10.4/16
    table.set_claims(P1, [r("10.1.0.0/16"), r("10.4.0.0/16")], 5)
    assert table.claims_of(P1) == [r("10.1.0.0/16"), r("10.4.0.0/16")]
    assert table.lookup(a("10.3.0.1"), 5) is None  # quirk 25.10 not replicated: gone at once
    assert [(addr, p) for addr, p, _ in table.cache()] == [(a("10.2.0.1"), P2)]
    assert table.lookup(a("10.4.0.1"), 5) == P1


def test_set_claims_without_removal_keeps_cache() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    table.lookup(a("10.1.0.1"), 0)
    table.set_claims(P1, [r("10.1.0.0/16"), r("10.5.0.0/16")], 1)
    assert table.cache_len() == 1
    assert table.claims_len() == 2


def test_set_claims_to_empty_and_duplicates() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16"), r("10.1.0.0/16"), r("10.2.0.0/16")], 0)
    assert table.claims_of(P1) == [r("10.1.0.0/16"), r("10.2.0.0/16")]
    table.set_claims(P1, [], 1)
    assert table.claims() == []


def test_refreshed_claims_keep_their_table_position() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    table.set_claims(P2, [r("10.1.0.0/16")], 0)
    table.set_claims(P1, [r("10.1.0.0/16")], 10)
    assert [p for _, p, _ in table.claims()] == [P1, P2]
    assert table.lookup(a("10.1.1.1"), 10) == P1


def test_remove_claims() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.0/16")], 0)
    table.set_claims(P2, [r("10.2.0.0/16")], 0)
    table.lookup(a("10.1.0.1"), 0)
    table.learn(a("02:00:00:00:00:02"), P2, 0)
    table.remove_claims(P1)
    assert table.claims_of(P1) == [] and table.claims_of(P2) == [r("10.2.0.0/16")]
    assert [p for _, p, _ in table.cache()] == [P2]
    assert table.lookup(a("10.1.0.1"), 1) is None


def test_prefix_longer_than_address_matches_identical_only() -> None:
    table = ClaimTable(300, 300)
    table.set_claims(P1, [r("10.1.0.7/33")], 0)
    assert table.lookup(a("10.1.0.8"), 0) is None
    assert table.lookup(a("10.1.0.7"), 0) == P1


def test_vlan_and_mac_addresses_are_separate_spaces() -> None:
    table = ClaimTable(300, 300)
    mac = a("02:00:00:00:00:01")
    table.learn(mac, P1, 0)
    assert table.lookup(b"\x00\x05" + mac, 0) is None
    table.learn(b"\x00\x05" + mac, P2, 0)
    assert table.lookup(mac, 0) == P1
    assert table.lookup(b"\x00\x05" + mac, 0) == P2
