"""Handshake flood protection (vpncloud/core/guard.py) and its wiring into Node, on the virtual network.

Claims checked here:
* token buckets refill from the ``now`` passed in; the per-source map is bounded (LRU);
* no reply ever goes to a source whose handshake message did not verify with a trusted key;
* replayed genuine PINGs from one source / from many spoofed sources cost at most burst + rate x time
  signature checks (counted on the real verify function);
* a PONG is larger than the PING provoking it (the protocol forces this); with the amplification budget
  a responder never sends an unauthenticated address more bytes than it received from it, also over the
  retransmission period, and handshakes still complete (wire-compatible, one tick later);
* a flood from one address does not stop a legitimate handshake from another.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from vpncloud.core import handshake as hs_mod
from vpncloud.core.guard import GuardConfig, HandshakeGuard, TokenBucket
from vpncloud.core.node import Node, NodeConfig
from vpncloud.sim.harness import Harness, SimNode


def test_token_bucket_refills_from_passed_time() -> None:
    b = TokenBucket.full(rate=2.0, burst=3.0, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(100.4)  # 0.8 tokens
    assert b.take(100.5)  # 1.0 token
    assert not b.take(99.0)  # time going backwards never adds tokens
    assert b.take(200.0) and b.tokens == pytest.approx(2.0)  # capped at burst


def test_guard_per_address_buckets_and_port_hopping() -> None:
    g = HandshakeGuard(GuardConfig(per_source_rate=1, per_source_burst=2, per_host_new_burst=4))
    peer = ("::ffff:1.2.3.4", 3210)
    assert g.allow_source(peer, 0.0) and g.allow_source(peer, 0.0)
    assert not g.allow_source(peer, 0.0)
    assert g.counters.dropped_source == 1
    # Another port of the same IP has its own bucket (spoofed PINGs carrying a peer's IP do not
    # drain the peer's own) ...
    assert g.allow_source(("::ffff:1.2.3.4", 4000), 0.0)
    # ... but hopping ports buys at most per_host_new_burst fresh buckets (+ rate x time).
    admitted = sum(g.allow_source(("::ffff:1.2.3.4", 5000 + i), 0.0) for i in range(1000))
    assert admitted == 4 - 2  # the peer's and port 4000's entries took two creation tokens
    assert g.counters.dropped_new_address == 998
    # An address the node knows (a session, or a handshake it started) skips the creation charge.
    assert g.allow_source(("::ffff:1.2.3.4", 6000), 0.0, known=True)


def test_guard_full_table_newcomers_share_one_overflow_bucket() -> None:
    g = HandshakeGuard(GuardConfig(per_source_rate=1, per_source_burst=2, max_sources=50))
    allowed = sum(g.allow_source((f"::ffff:10.0.{i // 256}.{i % 256}", 1), 0.0) for i in range(1000))
    # 50 tracked sources, then all the others share one bucket of 2: nobody got a fresh full bucket
    assert allowed == 50 + 2
    assert g.tracked_sources == 50 and g.counters.evicted_sources == 0
    # (the per-host creation table is full as well: newcomers share its overflow bucket too)
    assert g.counters.dropped_overflow + g.counters.dropped_new_address == 1000 - 52
    # Once the old entries hold no information (refilled), they make room again.
    assert g.allow_source(("::ffff:192.0.2.1", 1), 10.0)
    assert g.counters.evicted_sources == 1 and g.tracked_sources == 50


def test_guard_ping_replay_table() -> None:
    g = HandshakeGuard(GuardConfig(replay_ttl=100))
    key, first, other = b"k" * 32, ("::ffff:1.1.1.1", 1), ("::ffff:2.2.2.2", 2)
    assert g.ping_allowed(key, other, 0.0)  # not verified yet: a forgery cannot poison the table
    assert g.verified_ping_key(b"\xffping") is None
    g.record_ping(key, first, 0.0, b"\xffping")
    assert g.verified_ping_key(b"\xffping") == key  # a byte-identical replay needs no parse
    g.record_ping(key, other, 1.0)  # the first binding wins
    assert g.ping_allowed(key, first, 1.0)
    assert not g.ping_allowed(key, other, 1.0)
    assert g.counters.dropped_replayed_ping == 1
    assert g.ping_allowed(key, other, 101.0)  # after replay_ttl


def test_guard_pending_bounds() -> None:
    g = HandshakeGuard(GuardConfig(max_pending_per_host=2, max_pending=3))
    host = "::ffff:1.1.1.1"
    for port in (1, 2):
        assert g.pending_allowed((host, port))
        assert g.pending_started((host, port)) is None
    assert not g.pending_allowed((host, 3)) and g.counters.dropped_pending == 1
    assert g.pending_allowed((host, 1))  # already pending: fine
    assert g.pending_started(("::ffff:2.2.2.2", 1)) is None
    assert g.pending_started(("::ffff:3.3.3.3", 1)) == (host, 1)  # over the total: oldest goes
    assert g.pending_count == 3 and g.counters.evicted_pending == 1
    g.pending_ended((host, 2))
    assert g.pending_allowed((host, 3))


def test_guard_global_bucket() -> None:
    g = HandshakeGuard(GuardConfig(global_rate=10, global_burst=5))
    assert sum(g.allow_global(0.0) for _ in range(20)) == 5
    assert sum(g.allow_global(0.3) for _ in range(20)) == 3  # refilled 0.3 s x 10/s
    assert sum(g.allow_global(10.0) for _ in range(20)) == 5  # capped at the burst
    assert g.counters.dropped_global == 15 + 17 + 15 and g.counters.allowed == 13


def test_guard_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        GuardConfig(global_rate=0)
    with pytest.raises(ValueError):
        GuardConfig(max_sources=0)


def test_guard_config_rejects_a_zero_ttl_or_log_interval() -> None:
    with pytest.raises(ValueError):
        GuardConfig(budget_ttl=0)
    with pytest.raises(ValueError):
        GuardConfig(drop_log_interval=0)


# --- wiring into the node ---------------------------------------------------------------------------


class VerifyCounter:
    """Wraps the real Ed25519 verify used by the handshake and counts calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = hs_mod.ed25519_verify

        def counting(*args: bytes) -> bool:
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(hs_mod, "ed25519_verify", counting)


def captured_ping(h: Harness, a: SimNode, b: SimNode) -> bytes:
    """A genuine PING from a to b, taken off the virtual wire."""
    h.connect(a, b)

    def pings() -> list[bytes]:
        return [bytes(e.datagram.data) for e in h.net.trace if e.datagram.data[:1] == b"\xff"]

    assert h.run_until(lambda: bool(pings()), timeout=1)
    return pings()[0]


def fresh_node(guard: GuardConfig | None = None, password: str = "test123") -> Node:
    from vpncloud.core.peer_crypto import CryptoConfig
    from vpncloud.sim.harness import DEFAULT_ALGORITHMS, identity_from_password

    crypto = CryptoConfig(identity=identity_from_password(password), algorithms=list(DEFAULT_ALGORITHMS))
    node = Node(NodeConfig(guard=guard or GuardConfig()), crypto, 0.0, random.Random(7))
    assert node.guard.config == (guard or GuardConfig())
    return node


def test_forged_init_messages_get_no_reply_and_no_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    verify = VerifyCounter(monkeypatch)
    node = fresh_node()
    rnd = random.Random(1)
    for i in range(500):
        junk = b"\xff" + rnd.randbytes(rnd.randrange(0, 300))
        node.receive_datagram(junk, (f"192.0.2.{i % 200}", 4000 + i), float(i) / 100)
    assert node.datagrams_to_send() == []
    assert not node.pending and not node.peers
    # random key hashes never match a trusted key: no signature was checked, no global token spent
    assert verify.calls == 0
    assert node.guard.counters.allowed == 0


def test_reply_only_after_trusted_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine PING with one flipped signature bit is not answered; the genuine one is."""
    h = Harness(seed=3)
    a, b = h.add_node(), h.add_node()
    ping = captured_ping(h, a, b)
    node = fresh_node()
    bad = ping[:-1] + bytes([ping[-1] ^ 1])
    node.receive_datagram(bad, ("198.51.100.1", 3210), 0.0)
    assert node.datagrams_to_send() == []
    node.receive_datagram(ping, ("198.51.100.2", 3210), 0.0)
    assert node.datagrams_to_send() == []  # amplification budget: 155 bytes in do not pay a PONG
    node.receive_datagram(ping, ("198.51.100.2", 3210), 1.0)  # the initiator's repetition
    out = node.datagrams_to_send()
    assert len(out) == 1 and out[0][0][:1] == b"\xff"
    # The protocol forces this: a PONG carries a key, the algorithm list and the encrypted NODE_INFO.
    assert len(ping) == 155 and len(out[0][0]) > len(ping)


def test_replayed_ping_flood_from_one_source_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(seed=4)
    a, b = h.add_node(), h.add_node()
    ping = captured_ping(h, a, b)
    verify = VerifyCounter(monkeypatch)
    cfg = GuardConfig(per_source_rate=5, per_source_burst=10, global_rate=1000, global_burst=1000)
    node = fresh_node(cfg)
    src = ("203.0.113.9", 5555)
    n = 2000
    for i in range(n):  # 2000 datagrams within 2 s, also hopping ports
        node.receive_datagram(ping, (src[0], src[1] + i % 7), i / 1000)
    assert verify.calls <= 10 + 5 * 2 + 1
    st = node.status(2.0)["security"]["handshake_guard"]
    assert st["dropped_source"] + st["dropped_new_address"] + st["dropped_replayed_ping"] >= n - 21
    sent = sum(len(d) for d, _ in node.datagrams_to_send())
    assert sent <= (10 + 5 * 2 + 1) * 300


def test_one_replayed_ping_from_many_sources_is_answered_at_most_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 24: a captured PING replayed from 3000 spoofed sources (twice each, so that the byte
    budget would pay a PONG) gets one PONG in all, one pending handshake, one signature check; and
    after the flood, the node sends nothing to any of those addresses on its own."""
    h = Harness(seed=5)
    a, b = h.add_node(), h.add_node()
    ping = captured_ping(h, a, b)
    verify = VerifyCounter(monkeypatch)
    node = fresh_node(GuardConfig(max_sources=256))
    for i in range(3000):
        src = (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 3210)
        node.receive_datagram(ping, src, i / 3000)
        node.receive_datagram(ping, src, i / 3000 + 0.5)
    # the first copy; its byte-identical repetition is answered without a check, the other sources
    # are dropped before one
    assert verify.calls == 1
    assert len(node.datagrams_to_send()) == 1
    assert len(node.pending) <= 1
    st = node.status(2.0)["security"]["handshake_guard"]
    dropped = ("dropped_replayed_ping", "dropped_new_address", "dropped_overflow", "dropped_global")
    assert sum(st[k] for k in dropped) == 2 * 2999
    assert st["dropped_global"] == 0  # replays do not drain the global bucket legitimate PINGs need
    assert st["tracked_sources"] <= 256 and st["pending_inbound"] <= 1
    for t in range(2, 300):  # the responder's whole life: no PONG repeated unasked
        node.handle_timer(float(t))
    assert node.datagrams_to_send() == []
    assert not node.pending


def test_spoofed_valid_key_hashes_hit_the_global_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forged PINGs carrying a trusted key hash (bad signature) from many sources: signature checks
    stay within the global bucket."""
    h = Harness(seed=5)
    a, b = h.add_node(), h.add_node()
    ping = captured_ping(h, a, b)
    verify = VerifyCounter(monkeypatch)
    node = fresh_node(GuardConfig(global_rate=20, global_burst=40, max_sources=256))
    for i in range(3000):
        forged = ping[:-1] + bytes([(ping[-1] + 1 + i % 254) & 255])  # a signature byte
        node.receive_datagram(forged, (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 3210), i / 3000)
    assert verify.calls <= 40 + 20 + 1
    assert node.datagrams_to_send() == [] and not node.pending


def test_flood_from_one_source_does_not_block_a_legitimate_handshake() -> None:
    h = Harness(seed=6)
    a, b, c = h.add_node(), h.add_node(), h.add_node()
    ping = captured_ping(h, c, b)
    h.run_for(0.5)
    h.connect(a, b)
    attacker = ("10.0.0.250", 6666)
    for _ in range(20):
        for _ in range(100):  # 100 replayed PINGs per 0.1 s from one address
            h.deliver_raw(b, ping, attacker)
        h.run_for(0.1)
        if h.connected(a, b) and h.connected(b, a):
            break
    assert h.connected(a, b) and h.connected(b, a)
    assert b.node.guard.counters.dropped_source > 0


def test_amplification_budget_replayed_ping_over_retransmission_period() -> None:
    """The original's responder repeats its PONG every tick for up to 120 ticks to whoever sent one
    (replayed) PING. Ours never repeats it unasked; with the budget (default) one PING gets nothing."""
    results = {}
    for budget in (False, True):
        h = Harness(seed=8)
        a, b, c = h.add_node(), h.add_node(), h.add_node()
        c.node.guard = HandshakeGuard(GuardConfig(amplification_budget=budget))
        ping = captured_ping(h, a, b)  # c has not seen this PING (b has: it would drop the replay)
        victim = h.add_node()  # a node whose address the attacker spoofs; it ignores unknown PONGs
        h.stop(victim, graceful=False)
        h.net.trace.clear()
        h.deliver_raw(c, ping, victim.addr)
        h.run_for(30)
        sent = [
            len(e.datagram.data)
            for e in h.net.trace
            if e.datagram.sender == c.addr and e.datagram.dst == victim.addr and e.status != "queued"
        ]
        results[budget] = sent
    assert len(results[False]) == 1 and results[False][0] > 155  # one PONG, never repeated
    assert results[True] == []


def test_amplification_budget_keeps_handshakes_working() -> None:
    h = Harness(seed=9)
    a, b = h.add_node(), h.add_node()
    for n in (a, b):
        n.node.guard = HandshakeGuard(GuardConfig(amplification_budget=True))
    h.run_for(0.5)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    # b (responder) sent a at most what it received before the session existed
    assert b.node.guard.counters.dropped_amplification >= 1
    p = h.send_packet(a, b, b"hello")
    h.run_for(1)
    assert b.device_payloads()[-1] == p


def test_status_reports_guard_counters() -> None:
    node = fresh_node(GuardConfig(per_source_rate=1, per_source_burst=1))
    for i in range(5):
        node.receive_datagram(b"\xff" + bytes(200), ("192.0.2.1", 1000), i / 10)
    sec = node.status(1.0)["security"]
    assert sec["handshake_guard"]["dropped_source"] == 4
    assert sec["acl"] is None and sec["expired_key_refusals"] == 0


def test_spoofed_junk_leaves_no_per_source_state() -> None:
    """Traffic statistics, pending handshakes and the guard stay bounded under a spoofed-source flood."""
    node = fresh_node(GuardConfig(max_sources=100))
    rnd = random.Random(3)
    for i in range(5000):
        src = (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1 + i)
        junk = rnd.choice([b"\xff", b"\x00", b"\x01", b"\x02"]) + rnd.randbytes(rnd.randrange(0, 200))
        node.receive_datagram(junk, src, i / 5000)
    assert node.traffic.peers == {}
    assert not node.pending and not node.peers
    assert node.guard.tracked_sources <= 100
    assert node.datagrams_to_send() == []


# --- issue 24 -------------------------------------------------------------------------------------


def restart_under_attack(
    h: Harness, a: SimNode, b: SimNode, attack: Callable[[float], None], tries: int
) -> None:
    """Kill ``b``, start a new node at its address, and attack ``a`` until they are peers again."""
    h.stop(b, graceful=False)
    b2 = h.add_node("b2", b.addr, peers=[a])
    for _ in range(tries):
        attack(0.5)
        if h.connected(a, b2) and h.connected(b2, a):
            break
    assert h.connected(a, b2) and h.connected(b2, a)


def test_spoofed_pings_with_a_peers_ip_do_not_keep_it_from_rejoining() -> None:
    """20 forged PINGs per second carrying the peer's IP (other ports, trusted key hash, bad
    signature) while the peer restarts: it rejoins (the per-IP limit of issue 10 kept it out)."""
    h = Harness(seed=24)
    a = h.add_node()
    b = h.add_node(peers=[a])
    assert h.run_until(h.full_mesh, timeout=5)
    forged = captured_ping(h, h.add_node(), a)
    forged = forged[:-1] + bytes([forged[-1] ^ 1])
    rnd = random.Random(1)

    def attack(seconds: float) -> None:
        for _ in range(int(seconds * 20)):
            h.deliver_raw(a, forged, (b.addr[0], rnd.randrange(1024, 65535)))
            h.run_for(0.05)

    attack(2)
    restart_under_attack(h, a, b, attack, 10)
    g = a.node.guard.counters
    assert g.dropped_new_address > 0  # port hopping was charged to the host


def fresh_pings(n: int, password: str = "test123") -> list[bytes]:
    """Genuine PINGs of ``n`` different initiators (valid signatures, fresh ephemeral keys)."""
    from vpncloud.core.peer_crypto import CryptoConfig, PeerCrypto
    from vpncloud.sim.harness import DEFAULT_ALGORITHMS, identity_from_password

    cfg = CryptoConfig(identity=identity_from_password(password), algorithms=list(DEFAULT_ALGORITHMS))
    rng = random.Random(11)
    return [PeerCrypto.initiator(cfg, rng.randbytes(16), b"", rng)[1] for _ in range(n)]


def test_pending_handshakes_are_bounded_per_host_and_in_total() -> None:
    pings = fresh_pings(60)
    node = fresh_node(GuardConfig(max_pending_per_host=3, max_pending=20, per_host_new_burst=100))
    for i, p in enumerate(pings[:10]):  # one host, ten ports
        node.receive_datagram(p, ("192.0.2.1", 1000 + i), 0.0)
    assert len(node.pending) == 3 and node.guard.counters.dropped_pending == 7
    for i, p in enumerate(pings[10:]):  # fifty hosts
        node.receive_datagram(p, (f"192.0.2.{10 + i}", 3210), 0.5)
    assert len(node.pending) == 20 == node.guard.pending_count
    assert node.guard.counters.evicted_pending == 33
    # a handshake that completes or fails releases its slot (the counts stay consistent)
    for t in range(1, 200):
        node.handle_timer(float(t))
    assert not node.pending and node.guard.pending_count == 0
    assert node.datagrams_to_send() == []  # one PING each: the byte budget paid no PONG


def test_untrusted_pings_cost_no_responder_and_no_log_line_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from vpncloud.core.peer_crypto import PeerCrypto

    made = []
    real = PeerCrypto.responder

    def counting(*args: object, **kwargs: object) -> PeerCrypto:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PeerCrypto, "responder", staticmethod(counting))
    node = fresh_node(GuardConfig(max_sources=100))
    stranger = fresh_pings(1, password="someone else")[0]
    caplog.set_level("DEBUG", logger="vpncloud.node")
    for i in range(5000):
        node.receive_datagram(stranger, (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 3210), i / 1000)
    node.handle_timer(5.0)
    assert made == []
    g = node.guard.counters
    assert g.dropped_untrusted + g.dropped_new_address + g.dropped_overflow == 5000
    assert node.traffic.drops["authentication"] == g.dropped_untrusted
    assert len(caplog.records) <= 2  # the first drop in full, one summary with the counts


def test_garbage_from_a_peers_address_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(seed=25)
    a, b = h.add_node(), h.add_node()
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    caplog.set_level("DEBUG", logger="vpncloud.node")
    caplog.clear()
    before = sum(a.node.traffic.drops.values())
    rnd = random.Random(2)
    for _ in range(30):  # 3000 garbage frames over 30 s, from the peer's own address
        for _ in range(100):
            h.deliver_raw(a, bytes([rnd.randrange(4)]) + rnd.randbytes(60), b.addr)
        h.run_for(1)
    assert sum(a.node.traffic.drops.values()) - before == 3000  # every one counted
    drops = [r for r in caplog.records if "rypto error" in r.getMessage() or "Dropped" in r.getMessage()]
    assert 2 <= len(drops) <= 2 * (30 // 10 + 1)
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Dropped")]
    assert summary and "authentication" in summary[0]
    assert h.connected(a, b)


def test_a_lost_peng_is_recovered_without_timer_retransmission() -> None:
    """The responder no longer repeats its PONG unasked; our initiator's keepalive proves (it opens
    with the PONG's key) that it got the PONG, and the PONG repeated in answer earns the PENG again."""
    from vpncloud.sim.network import DropNth

    h = Harness(seed=26)
    a, b = h.add_node(), h.add_node()
    lost = DropNth(lambda d: d.stage == 3)
    h.net.add_filter(lost)
    h.run_for(0.5)
    h.connect(a, b)
    assert h.run_until(lambda: h.full_mesh() and not b.node.pending, timeout=10)
    assert len(lost.dropped) == 1


def test_a_reload_keeps_the_guard_and_says_its_limits_wait_for_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new guard on SIGHUP would forget every budget it tracks: the limits stay until a restart."""
    node = fresh_node(GuardConfig(max_pending_per_host=1, drop_log_interval=60))
    guard = node.guard
    with caplog.at_level("WARNING", logger="vpncloud"):
        node.reconfigure(NodeConfig(guard=GuardConfig(max_pending_per_host=5)), node.crypto, 1.0)
    assert node.guard is guard and node.config.guard.max_pending_per_host == 1
    assert "apply at the next restart" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vpncloud"):
        node.reconfigure(
            NodeConfig(guard=GuardConfig(max_pending_per_host=1, drop_log_interval=60)), node.crypto, 2.0
        )
    assert "restart" not in caplog.text


def test_the_drop_log_interval_comes_from_the_guard_config(caplog: pytest.LogCaptureFixture) -> None:
    node = fresh_node(GuardConfig(drop_log_interval=100.0))
    with caplog.at_level("INFO", logger="vpncloud"):
        for t in (0.0, 20.0, 50.0, 99.0):  # one interval: only the first is logged in full
            node.receive_datagram(b"\x01garbage", ("192.0.2.9", 4000), t)
    assert caplog.text.count("unknown peer") == 1
    with caplog.at_level("INFO", logger="vpncloud"):
        node.receive_datagram(b"\x01garbage", ("192.0.2.9", 4000), 101.0)
    assert "Dropped 3 more datagrams" in caplog.text and caplog.text.count("unknown peer") == 2


def test_copies_of_a_forged_ping_cost_one_signature_check_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PING with a trusted key hash and a broken signature, sent from 3000 addresses: the first copy
    is verified and fails, every other copy is dropped by a lookup before any bucket, parse or global
    token; so the genuine PING, which differs in its signature bytes, is still verified and answered."""
    h = Harness(seed=8)
    a, b = h.add_node(), h.add_node()
    ping = captured_ping(h, a, b)
    forged = ping[:-1] + bytes([ping[-1] ^ 1])
    verify = VerifyCounter(monkeypatch)
    node = fresh_node(GuardConfig(global_rate=20, global_burst=40, max_sources=256))
    for i in range(3000):
        node.receive_datagram(forged, (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 3210), i / 3000)
    assert verify.calls == 1
    st = node.status(1.0)["security"]["handshake_guard"]
    assert st["dropped_bad_signature"] == 2999 and st["tracked_bad_signatures"] == 1
    assert st["tracked_sources"] == 1 and st["dropped_global"] == 0 and st["allowed"] == 1
    assert node.traffic.drops["authentication"] == 3000
    assert node.datagrams_to_send() == [] and not node.pending
    src = ("198.51.100.7", 3210)
    node.receive_datagram(ping, src, 1.0)
    node.receive_datagram(ping, src, 2.0)  # the initiator's repetition pays for the PONG
    assert verify.calls == 2
    out = node.datagrams_to_send()
    assert len(out) == 1 and out[0][0][:1] == b"\xff" and ("::ffff:198.51.100.7", 3210) in node.pending


def test_the_bad_signature_table_is_bounded_and_forgotten_with_the_keys() -> None:
    h = Harness(seed=9)
    a, b = h.add_node(), h.add_node()
    ping = captured_ping(h, a, b)
    node = fresh_node(GuardConfig(max_sources=16, global_rate=1000, global_burst=1000))
    forgeries = [ping[:-2] + bytes([i >> 8, i & 255]) for i in range(40)]
    for i, forged in enumerate(forgeries):  # 10 s apart: the address tables stay open to newcomers
        node.receive_datagram(forged, (f"10.0.{i}.1", 3210), 10.0 * i)
    table = node.guard.bad_signatures
    assert len(table) == 16 and list(table) == forgeries[-16:]  # the oldest go first
    node.receive_datagram(forgeries[0], ("10.1.0.1", 3210), 500.0)  # forgotten: checked again
    assert node.guard.counters.dropped_bad_signature == 0 and forgeries[0] in table

    # the same keys (a reload that changed something else): the table stays
    node.reconfigure(NodeConfig(), node.crypto, 501.0)
    assert len(table) == 16
    # other trusted keys: bytes that failed with the old ones are checked again
    from vpncloud.core.peer_crypto import CryptoConfig
    from vpncloud.sim.harness import DEFAULT_ALGORITHMS, identity_from_password

    other = CryptoConfig(identity=identity_from_password("other"), algorithms=list(DEFAULT_ALGORITHMS))
    node.reconfigure(NodeConfig(), other, 502.0)
    assert len(node.guard.bad_signatures) == 0


def test_the_reserve_of_a_returning_host_serves_it_only_when_the_global_limit_is_spent() -> None:
    cfg = GuardConfig(global_rate=1.0, global_burst=1.0, returning_rate=1.0, returning_burst=2.0)
    g = HandshakeGuard(cfg)
    assert g.allow_global(0.0, "10.0.0.9")  # the global token first, the reserve untouched
    assert not g.allow_global(0.0, "10.0.0.9")  # never connected: no reserve
    g.remember_peer("10.0.0.9", 0.0)
    assert g.allow_global(0.0, "10.0.0.9") and g.allow_global(0.0, "10.0.0.9")
    assert not g.allow_global(0.0, "10.0.0.9")  # its burst of 2 is spent
    assert not g.allow_global(0.0, "10.0.0.8")  # another host does not share it
    assert g.allow_global(1.5, "10.0.0.8")  # the global bucket refilled
    assert g.allow_global(1.5, "10.0.0.9")  # the reserve refilled (1/s) while the global one is spent
    c = g.counters
    assert (c.allowed, c.allowed_returning, c.dropped_global) == (2, 3, 3)


def test_returning_hosts_are_bounded_least_recently_connected_first() -> None:
    g = HandshakeGuard(GuardConfig(global_rate=1.0, global_burst=1.0, max_sources=3))
    for i in range(4):
        g.remember_peer(f"10.0.0.{i}", 0.0)
    g.remember_peer("10.0.0.1", 0.0)  # connected again: the most recent now
    g.remember_peer("10.0.0.4", 0.0)  # one more: 10.0.0.2 is the least recently connected left
    assert g.allow_global(0.0)  # spend the global token
    assert [g.allow_global(0.0, f"10.0.0.{i}") for i in range(5)] == [False, True, False, True, True]


def test_a_peer_rejoins_while_forgeries_with_varied_signatures_spend_the_global_limit() -> None:
    """Issue 24: 1,000 forged PINGs per second (trusted key hash, another signature in each, from
    random hosts) keep the global bucket spent, so the signature check admits a PING from outside
    by luck only; a peer that restarts meanwhile rejoins on its host's reserve."""
    h = Harness(seed=26)
    a = h.add_node()
    b = h.add_node(peers=[a])
    assert h.run_until(h.full_mesh, timeout=5)
    ping = fresh_pings(1)[0]  # never delivered: its ephemeral key is in no replay table
    rnd = random.Random(3)

    def attack(seconds: float) -> None:
        for _ in range(int(seconds * 20)):
            for _ in range(50):
                forged = ping[:-32] + rnd.randbytes(2) + ping[-30:]
                src = (f"198.51.{rnd.randrange(256)}.{rnd.randrange(1, 255)}", rnd.randrange(1024, 65535))
                h.deliver_raw(a, forged, src)
            h.run_for(0.05)

    attack(3)
    g = a.node.guard.counters
    assert g.dropped_global > 0 and g.allowed_returning == 0
    restart_under_attack(h, a, b, attack, 20)
    assert g.allowed_returning > 0  # b2's PING passed on b's reserve, not on a spare global token
