"""The relay core (vpncloud/core/relay.py) on real nodes under the simulator's virtual clock:
capability, forwarding limits and refusals, the synthetic address, ACLs end to end."""

from __future__ import annotations

import ipaddress
import logging
import struct

import pytest

from vpncloud.core.acl import AclPolicy, AclRule
from vpncloud.core.errors import ConfigError
from vpncloud.core.messages import MSG_DATA
from vpncloud.core.node import Peer, PeerDisconnected
from vpncloud.core.relay import (
    FEATURE_RELAY_END,
    FEATURE_RELAY_OFFER,
    MSG_RELAY_FROM,
    MSG_RELAY_REFUSED,
    MSG_RELAY_TO,
    REFUSED_NO_ROUTE,
    RelayConfig,
    TokenBucket,
    is_synthetic,
)
from vpncloud.core.types import SocketAddr, format_sockaddr, nice
from vpncloud.daemon.control import print_status
from vpncloud.daemon.loop import peer_env
from vpncloud.daemon.security_file import parse_security
from vpncloud.fastpath.superpacket import FEATURE_TCP, decode_features
from vpncloud.sim.harness import Harness, SimNode, ipv4_packet

BIG = RelayConfig(offer=True, use=True)
END = RelayConfig(use=True)


def tcp(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipv4_packet(
        src, dst, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 1024, 0, 0) + b"x", 6
    )


def nid(n: int) -> bytes:
    return bytes([n]) * 16


def node(h: Harness, name: str, n: int, cfg: RelayConfig | None) -> SimNode:
    sn = h.add_node(name, (f"10.0.0.{n}", 3210), node_id=nid(n))
    if cfg is not None:
        sn.node.enable_relays(cfg, h.now)
    return sn


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def relayed(x: SimNode, y: SimNode) -> bool:
    return any(p.node_id == y.node_id and is_synthetic(a) for a, p in x.node.peers.items())


def only_via(h: Harness, r: SimNode, x: SimNode, y: SimNode) -> None:
    """x and y know r; nothing passes between them directly."""
    cut = {x.addr, y.addr}
    h.net.add_filter(lambda dg: {dg.sender, dg.dst} == cut)
    h.add_configured_peer(x, r)
    h.add_configured_peer(y, r)


def trio(relay: RelayConfig = BIG) -> tuple[Harness, SimNode, SimNode, SimNode]:
    """a and b (public, but nothing passes between them) relayed through r."""
    h = Harness(seed=7)
    r = node(h, "r", 0x10, relay)
    a = node(h, "a", 0x01, END)
    b = node(h, "b", 0x02, END)
    only_via(h, r, a, b)
    assert h.run_until(lambda: relayed(a, b) and relayed(b, a), timeout=300)
    return h, r, a, b


def peer_entry(x: SimNode, y: SimNode) -> tuple[SocketAddr, Peer]:
    (entry,) = [(a, p) for a, p in x.node.peers.items() if p.node_id == y.node_id and not is_synthetic(a)]
    return entry


# --- capability --------------------------------------------------------------------------------


def test_capability_is_announced_only_when_enabled() -> None:
    h = Harness(seed=1)
    plain = h.add_node("plain")
    assert plain.node._node_info_bytes() == plain.node._node_info().encode()
    end = node(h, "end", 5, END)
    assert decode_features(end.node._node_info_bytes()) == FEATURE_RELAY_END
    relay = node(h, "relay", 6, BIG)
    assert decode_features(relay.node._node_info_bytes()) == FEATURE_RELAY_END | FEATURE_RELAY_OFFER
    relay.node.super_features = FEATURE_TCP
    assert (
        decode_features(relay.node._node_info_bytes())
        == FEATURE_TCP | FEATURE_RELAY_END | FEATURE_RELAY_OFFER
    )


def test_token_bucket() -> None:
    bucket = TokenBucket(100_000.0, 0.0)
    assert bucket.take(100_000, 0.0)
    assert not bucket.take(1, 0.0)
    assert bucket.take(50_000, 0.5)
    assert not bucket.take(1, 0.5)
    assert bucket.take(100_000, 10.0)  # refills to the burst, not beyond
    assert not bucket.take(1, 10.0)


# --- relayed sessions ----------------------------------------------------------------------------


def test_relayed_session_carries_data_and_hides_synthetic_addresses() -> None:
    h, r, a, b = trio()
    p = h.send_packet(a, b, b"hello via r")
    h.run_for(1)
    assert b.device_payloads()[-1] == p
    assert r.device_payloads() == []
    # The synthetic address never leaves the node: a's peer list names b by its real address only.
    info = a.node._node_info()
    assert all(not is_synthetic(x) for e in info.peers for x in e.addrs)
    assert any(e.node_id == b.node_id and b.addr in e.addrs for e in info.peers)
    status = a.node.status(h.now)["relay"]
    assert [e["node_id"] for e in status["relayed_peers"]] == [b.node_id.hex()]
    assert status["relayed_peers"][0]["relay"] == r.node_id.hex()


def test_hook_env_names_the_relay_of_a_relayed_peer() -> None:
    _h, r, a, b = trio()
    (synthetic,) = [x for x, p in a.node.peers.items() if p.node_id == b.node_id and is_synthetic(x)]
    relay_addr, _ = peer_entry(a, r)
    env = peer_env(a.node, synthetic, "[100::1]:1")
    assert env == {
        "PEER": "[100::1]:1",
        "RELAY": format_sockaddr(nice(relay_addr)),
        "RELAY_NODE_ID": r.node_id.hex(),
    }
    assert peer_env(a.node, relay_addr, "10.0.0.16:3210") == {"PEER": "10.0.0.16:3210"}
    a.node.set_relays(None)  # relays off: no relay manager, plain PEER
    assert peer_env(a.node, synthetic, "[100::1]:1") == {"PEER": "[100::1]:1"}


def test_acl_holds_end_to_end_through_the_relay() -> None:
    h, r, a, b = trio()
    b.node.set_acl(AclPolicy((AclRule((net(a.vpn_ip),), (net(b.vpn_ip),), "tcp", ((22, 22),)),)))
    denied = tcp(a.vpn_ip, b.vpn_ip, 40000, 80)
    allowed = tcp(a.vpn_ip, b.vpn_ip, 40001, 22)
    before = r.node.relay.counters["forwarded_packets"] if r.node.relay else 0
    h.inject(a, denied)
    h.inject(a, allowed)
    h.run_for(1)
    assert r.node.relay is not None and r.node.relay.counters["forwarded_packets"] >= before + 2
    assert b.device_payloads()[-1] == allowed and denied not in b.device_payloads()
    assert b.node.status(h.now)["security"]["acl"]["denied_in"] == 1


def burst(h: Harness, a: SimNode, b: SimNode, count: int) -> int:
    """Inject ``count`` 1000-byte packets at once; how many arrived at b."""
    before = len(b.device_payloads())
    for i in range(count):
        h.inject(a, ipv4_packet(a.vpn_ip, b.vpn_ip, struct.pack("!I", i) + bytes(996)))
    h.run_for(0.5)
    return len(b.device_payloads()) - before


def test_per_pair_cap() -> None:
    h, r, a, b = trio(RelayConfig(offer=True, pair_rate=70_000.0))
    h.run_for(5)  # refill after the handshake
    got = burst(h, a, b, 100)
    assert r.node.relay is not None
    assert 0 < got < 100
    assert r.node.relay.counters["pair_cap"] == 100 - got
    assert r.node.relay.counters["total_cap"] == 0
    h.run_for(5)
    assert burst(h, a, b, 10) == 10


def test_total_cap() -> None:
    h, r, a, b = trio(RelayConfig(offer=True, total_rate=70_000.0))
    h.run_for(5)
    got = burst(h, a, b, 100)
    assert r.node.relay is not None
    assert 0 < got < 100
    assert r.node.relay.counters["total_cap"] == 100 - got
    assert r.node.relay.counters["pair_cap"] == 0


# --- refusals, with messages handed to the relay directly ----------------------------------------


def star(relay: RelayConfig) -> tuple[Harness, SimNode, SimNode, SimNode, SimNode]:
    """r with direct sessions to a, b (ours) and o (no relay capability)."""
    h = Harness(seed=9)
    r = node(h, "r", 0x10, relay)
    a = node(h, "a", 0x01, END)
    b = node(h, "b", 0x02, END)
    o = node(h, "o", 0x03, None)
    for x in (a, b, o):
        h.add_configured_peer(x, r)
    assert h.run_until(lambda: all(h.connected(r, x) and h.connected(x, r) for x in (a, b, o)), timeout=30)
    h.run_for(2)  # the features come with the handshake's NODE_INFO; let pending output drain
    return h, r, a, b, o


def test_relay_refusals_are_counted_and_answered_only_to_ours() -> None:
    h, r, a, b, o = star(RelayConfig(offer=True, max_pairs=1, pair_idle=60.0))
    relay = r.node.relay
    assert relay is not None
    a_addr, a_peer = peer_entry(r, a)
    now = h.now
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, o.node_id + b"\x00" * 40, now)
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, nid(0x7F) + b"\x00" * 40, now)
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, b.node_id, now)
    relay.on_message(a_peer, ("100::5", 5), MSG_RELAY_TO, b.node_id + b"x", now)
    # a delivery to a node that does not use relays (r's own config: use=False)
    relay.on_message(a_peer, a_addr, MSG_RELAY_FROM, b.node_id + b"x", now)
    c = relay.counters
    refused = ("not_capable", "no_route", "malformed", "chained", "not_offered")
    assert {k: c[k] for k in refused} == dict.fromkeys(refused, 1)
    assert c["forwarded_packets"] == 0
    # "not capable" and "no route" are answered to a (ours), once per pair and second
    assert [dst for _, dst in r.node.datagrams_to_send()] == [a.addr, a.addr]
    assert c["refusals_sent"] == 2
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, o.node_id + b"\x00" * 40, now + 0.5)
    assert r.node.datagrams_to_send() == [] and c["refusals_sent"] == 2
    _o_addr, o_peer0 = peer_entry(r, o)
    relay.on_message(o_peer0, _o_addr, MSG_RELAY_TO, a.node_id + b"x", now)  # o is not ours: silence
    assert r.node.datagrams_to_send() == [] and c["not_capable"] == 3
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, b.node_id + b"x", now)
    assert c["forwarded_packets"] == 1
    assert [dst for _, dst in r.node.datagrams_to_send()] == [b.addr]
    # The same pair in the other direction shares the state; a new pair waits until one is idle.
    b_addr, b_peer = peer_entry(r, b)
    relay.on_message(b_peer, b_addr, MSG_RELAY_TO, a.node_id + b"y", now)
    assert c["forwarded_packets"] == 2 and c["pairs_full"] == 0
    _o_addr, o_peer = peer_entry(r, o)
    o_peer.features |= FEATURE_RELAY_END  # pretend o is ours, to make a second pair
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, o.node_id + b"z", now)
    assert c["pairs_full"] == 1
    relay.on_message(a_peer, a_addr, MSG_RELAY_TO, o.node_id + b"z", now + 61)
    assert c["pairs_full"] == 1 and c["forwarded_packets"] == 3


def test_relay_off_forwards_nothing() -> None:
    h, r, a, b, _o = star(RelayConfig(use=True))
    assert r.node.relay is not None
    a_addr, a_peer = peer_entry(r, a)
    r.node.relay.on_message(a_peer, a_addr, MSG_RELAY_TO, b.node_id + b"x", h.now)
    assert r.node.relay.counters["not_offered"] == 1
    assert r.node.datagrams_to_send() == []


def test_attempts_to_a_node_that_never_answers_back_off() -> None:
    """a wants o (listed by r) but o is not ours: the relay refuses, and a's relayed attempts thin
    out instead of costing the relay a handshake every ``retry`` seconds for ever."""
    h = Harness(seed=11)
    r = node(h, "r", 0x10, BIG)
    a = node(h, "a", 0x01, END)
    o = node(h, "o", 0x03, None)
    only_via(h, r, a, o)
    assert r.node.relay is not None
    h.run_for(600)
    first = r.node.relay.counters["not_capable"]
    assert first > 0
    h.run_for(3000)
    later = r.node.relay.counters["not_capable"] - first
    # A handshake retransmits its PING for about two minutes; retried every 30 s the next 50
    # minutes would cost about five times the first ten, backed off it is less than those.
    assert later < first
    assert o.invalid_packets() == 0


def test_set_relays_reconfigures_and_switches_off() -> None:
    _h, r, a, b = trio()
    assert r.node.relay is not None
    r.node.set_relays(RelayConfig(offer=True, use=True, pair_rate=70_000.0))
    assert r.node.relay.config.pair_rate == 70_000.0
    # Switched off at an end: its relayed session goes, and it announces no relay bits any more.
    a.node.set_relays(None)
    assert a.node.relay is None and not relayed(a, b)
    assert decode_features(a.node._node_info_bytes()) == 0
    events = iter(a.node.next_event, None)
    assert any(isinstance(e, PeerDisconnected) and e.node_id == b.node_id for e in events)


def test_security_file_relay_section() -> None:
    sec = parse_security({"relay": {"offer": True, "use": True, "pair_rate": 5000, "max_pairs": 3}})
    assert sec.relay == RelayConfig(offer=True, use=True, pair_rate=5000.0, max_pairs=3)
    assert parse_security({"acl": None}).relay is None
    listed = parse_security({"relay": {"use": True, "at_once": ["ab" * 16]}}).relay
    assert listed is not None and listed.at_once == frozenset({b"\xab" * 16})
    assert listed.relay_at_once(b"\xab" * 16) and not listed.relay_at_once(b"\xcd" * 16)
    assert parse_security({"relay": {"use": True, "at_once": True}}).relay == RelayConfig(
        use=True, at_once=True
    )
    for bad, message in (
        ({"relay": [1]}, "must be a mapping"),
        ({"relay": {"offer": "yes"}}, "offer must be true or false"),
        ({"relay": {"pair_rate": 0}}, "pair_rate must be a positive integer"),
        ({"relay": {"via": "x"}}, "unknown keys in 'relay': via"),
        ({"relay": {"at_once": "yes"}}, "at_once must be true, false or a list of node ids"),
        ({"relay": {"at_once": ["ab" * 15]}}, "is no node id"),
        ({"relay": {"at_once": ["zz" * 16]}}, "is no node id"),
        ({"relay": {"at_once": [7]}}, "is no node id"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_security(bad)


def test_batched_receive_forwards_relay_messages() -> None:
    """The daemon hands a GRO batch to ``receive_datagrams``; its fast path forwards relay messages
    without decrypting them twice, with the same result as one by one."""
    h, r, a, b = trio()
    assert r.node.relay is not None
    packets = [ipv4_packet(a.vpn_ip, b.vpn_ip, bytes([i]) * 100) for i in range(5)]
    for p in packets:
        a.node.receive_packet(p, h.now)
    out = a.node.datagrams_to_send()
    assert {dst for _, dst in out} == {r.addr}  # wrapped for the relay, nothing to the synthetic address
    before = r.node.relay.counters["forwarded_packets"]
    r.node.receive_datagrams([d for d, _ in out], a.addr, h.now)
    assert r.node.relay.counters["forwarded_packets"] == before + 5
    forwarded = r.node.datagrams_to_send()
    assert {dst for _, dst in forwarded} == {b.addr}
    for d, _ in forwarded:
        h.deliver_raw(b, d, r.addr)
    assert b.device_payloads()[-5:] == packets
    # a replay of the batch, once the replay window has moved on (a few ticks, as the original's),
    # is refused like replayed DATA
    for t in range(1, 5):
        r.node.handle_timer(h.now + t)
    r.node.datagrams_to_send()
    r.node.receive_datagrams([d for d, _ in out], a.addr, h.now + 4)
    assert r.node.relay.counters["forwarded_packets"] == before + 5


def test_a_real_source_in_the_discard_prefix_is_no_relayed_peer() -> None:
    """A valid datagram of a's relayed session, sent to b from the synthetic address itself (a
    spoofed IPv6 source in 100::/64) instead of through the relay, is dropped."""
    h, _r, a, b = trio()
    (a_synth,) = [k for k, p in a.node.peers.items() if is_synthetic(k)]
    (b_synth,) = [k for k, p in b.node.peers.items() if is_synthetic(k)]
    packet = ipv4_packet(a.vpn_ip, b.vpn_ip, b"spoofed")
    inner = a.node.peers[a_synth].crypto.send_message(MSG_DATA, packet)
    before = b.invalid_packets()
    h.deliver_raw(b, inner, b_synth)
    b.node.receive_datagrams([inner], b_synth, h.now)
    assert packet not in b.device_payloads()
    assert b.invalid_packets() == before + 2


def test_human_status_names_the_relay(capsys: pytest.CaptureFixture[str]) -> None:
    h, r, a, _b = trio()
    print_status(a.node.status(h.now))
    out = capsys.readouterr().out
    assert f"via relay {r.node_id.hex()[:12]}" in out
    assert "relaying:" not in out  # a does not offer
    print_status(r.node.status(h.now))
    out = capsys.readouterr().out
    assert "relaying: 1 pairs" in out and "via relay" not in out


def test_no_relay_has_a_route_the_end_says_unreachable_and_backs_off(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """a wants o through r, but o is not ours: r answers at once, a drops the relayed handshake (no
    two minutes of retransmitted PINGs), says o is unreachable (log and status) and asks again only
    after the backoff."""
    h = Harness(seed=12)
    r = node(h, "r", 0x10, BIG)
    a = node(h, "a", 0x01, RelayConfig(use=True, at_once=True))
    o = node(h, "o", 0x03, None)
    only_via(h, r, a, o)
    assert r.node.relay is not None and a.node.relay is not None
    with caplog.at_level(logging.INFO, logger="vpncloud.relay"):
        assert h.run_until(lambda: bool(a.node.relay and a.node.relay.unreachable), timeout=120)
    assert "Peer 03030303 is unreachable: relay 10101010 cannot relay to it" in caplog.text
    assert a.node.status(h.now)["relay"]["unreachable"] == [o.node_id.hex()]
    print_status(a.node.status(h.now))
    assert f"{o.node_id.hex()[:12]} unreachable: no relay can reach it" in capsys.readouterr().out
    assert not any(is_synthetic(k) for k in a.node.pending)
    sent = r.node.relay.counters["not_capable"]
    h.run_for(25)  # within the first backoff (30 s): no more relayed PINGs
    assert r.node.relay.counters["not_capable"] == sent
    h.run_for(10)
    assert r.node.relay.counters["not_capable"] > sent  # asked again after the backoff
    assert o.invalid_packets() == 0


def test_a_refusal_counts_only_from_a_relay() -> None:
    h, _r, a, b, o = star(RelayConfig(offer=True))
    relay = a.node.relay
    assert relay is not None
    b_addr, b_peer = peer_entry(a, b)  # b is an end, not a relay
    relay.on_message(b_peer, b_addr, MSG_RELAY_REFUSED, o.node_id + bytes((REFUSED_NO_ROUTE,)), h.now)
    assert relay.counters["not_offered"] == 1
    assert not relay.unreachable and o.node_id not in relay._wanted
