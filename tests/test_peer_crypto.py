"""PeerCrypto: handshake -> session core + rotation, driven pairwise (spec 6.8, 8.4, 22.5)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncloud.core.errors import CryptoError, DecodeError, InitError, InitFatal, ReplayError
from vpncloud.core.identity import Identity
from vpncloud.core.peer_crypto import (
    CryptoConfig,
    Initialized,
    Message,
    Nothing,
    PeerCrypto,
    Reply,
)
from vpncloud.core.primitives import Algorithm

IDENT = Identity.from_config(password="test")
ALGS = [(Algorithm.AES128, 600.0), (Algorithm.AES256, 500.0), (Algorithm.CHACHA20, 400.0)]
CFG = CryptoConfig(IDENT, ALGS, False)
PLAIN_CFG = CryptoConfig(IDENT, [], True)


def connect(cfg: CryptoConfig = CFG, seed: int = 1) -> tuple[PeerCrypto, PeerCrypto, list[object]]:
    """Full handshake A -> B; returns (A, B, results in order)."""
    rng = random.Random(seed)
    a, ping = PeerCrypto.initiator(cfg, b"A" * 16, b"node-info-a", rng)
    b = PeerCrypto.responder(cfg, b"B" * 16, b"node-info-b", rng)
    r1 = b.handle_message(ping)
    assert isinstance(r1, Reply)
    r2 = a.handle_message(r1.data)
    assert isinstance(r2, Initialized) and r2.reply is not None
    r3 = b.handle_message(r2.reply)
    assert isinstance(r3, Initialized)
    results: list[object] = [r1, r2, r3]
    if r3.reply is not None:
        results.append(a.handle_message(r3.reply))
    return a, b, results


def test_normal_handshake_results() -> None:
    a, b, (r1, r2, r3, r4) = connect()
    assert isinstance(r1, Reply)
    assert isinstance(r2, Initialized) and r2.node_info == b"node-info-b"
    assert isinstance(r3, Initialized) and r3.node_info == b"node-info-a"
    assert r3.reply is not None and len(r3.reply) == 67  # encrypted ROTATION id 1 (42 + 25)
    assert r4 == Nothing()
    assert a.is_ready and b.is_ready
    assert a.algorithm is b.algorithm is Algorithm.AES128
    assert a.has_init and not b.has_init  # the initiator keeps its state ~61 ticks
    assert a.handshake_initiator and not b.handshake_initiator
    assert a.peer_timeout is None
    info_a, info_b = a.rotation_info(), b.rotation_info()
    assert info_a is not None and info_b is not None
    assert info_a["rotation_initiator"] is False and info_b["rotation_initiator"] is True
    assert info_b["message_id"] == 1 and info_a["message_id"] == 0
    assert info_a["ticks_to_next_cycle"] == 120 and info_a["send_slot"] == 0
    a.every_tick()
    assert (a.rotation_info() or {})["ticks_to_next_cycle"] == 119


def test_session_messages_both_ways() -> None:
    a, b, _ = connect()
    frame = a.send_message(0, b"packet")
    assert len(frame) == 6 + 25
    assert b.handle_message(frame) == Message(0, b"packet")
    assert a.handle_message(b.send_message(0xFF, b"")) == Message(0xFF, b"")
    assert len(b.send_message(0xFF, b"")) == 25


def test_plain_session() -> None:
    a, b, results = connect(PLAIN_CFG)
    assert len(results) == 3
    r3 = results[2]
    assert isinstance(r3, Initialized) and r3.reply is None  # no ROTATION on plain sessions
    assert a.algorithm is Algorithm.PLAIN
    assert a.rotation_info() is None
    assert a.send_message(0, b"pkt") == b"\x00pkt"
    assert b.handle_message(b"\x00pkt") == Message(0, b"pkt")
    assert b.handle_message(b"\x01info") == Message(1, b"info")
    # a plain CLOSE (0xff) is an init message: rejected, never a Message (quirk 8)
    with pytest.raises(CryptoError):
        a.handle_message(b"\xff")
    with pytest.raises(CryptoError):
        b.handle_message(b"\xff")
    for _ in range(200):
        assert a.every_tick() is None
        assert b.every_tick() is None


def test_messages_before_session_rejected() -> None:
    rng = random.Random(2)
    a, _ = PeerCrypto.initiator(CFG, b"A" * 16, b"", rng)
    assert not a.is_ready and a.algorithm is None
    with pytest.raises(CryptoError):
        a.send_message(0, b"x")
    with pytest.raises(CryptoError):
        a.handle_message(bytes(40))
    with pytest.raises(CryptoError):
        a.handle_message(b"")


def test_duplicate_pong_answered_with_same_peng_while_has_init() -> None:
    rng = random.Random(3)
    a, ping = PeerCrypto.initiator(CFG, b"A" * 16, b"ia", rng)
    b = PeerCrypto.responder(CFG, b"B" * 16, b"ib", rng)
    pong = b.handle_message(ping)
    assert isinstance(pong, Reply)
    init = a.handle_message(pong.data)
    assert isinstance(init, Initialized)
    assert a.handle_message(pong.data) == Reply(init.reply or b"")
    for _ in range(61):
        a.every_tick()
    assert not a.has_init
    with pytest.raises(InitError):
        a.handle_message(pong.data)


def test_lost_ping_pong_peng_recovered_by_ticks() -> None:
    rng = random.Random(4)
    a, ping = PeerCrypto.initiator(CFG, b"A" * 16, b"ia", rng)
    b = PeerCrypto.responder(CFG, b"B" * 16, b"ib", rng)
    # PING lost
    assert a.every_tick() == ping
    pong = b.handle_message(ping)
    assert isinstance(pong, Reply)
    # PONG lost
    assert b.every_tick() == pong.data
    init_a = a.handle_message(pong.data)
    assert isinstance(init_a, Initialized) and init_a.reply is not None
    # PENG lost: B retransmits PONG, A answers with the same PENG
    again = b.every_tick()
    assert again == pong.data
    assert a.handle_message(again) == Reply(init_a.reply)
    init_b = b.handle_message(init_a.reply)
    assert isinstance(init_b, Initialized)
    assert b.handle_message(a.send_message(1, b"x")) == Message(1, b"x")


def test_handshake_timeout() -> None:
    a, ping = PeerCrypto.initiator(CFG, b"A" * 16, b"", random.Random(5))
    for _ in range(120):
        assert a.every_tick() == ping
    with pytest.raises(InitFatal):
        a.every_tick()
    assert not a.has_init and not a.is_ready


@pytest.mark.parametrize("seed", range(4))
def test_concurrent_init(seed: int) -> None:
    rng = random.Random(seed)
    a, ping_a = PeerCrypto.initiator(CFG, b"A" * 16, b"ia", rng)
    b, ping_b = PeerCrypto.initiator(CFG, b"B" * 16, b"ib", rng)
    ra, rb = a.handle_message(ping_b), b.handle_message(ping_a)
    # exactly one side ignores the other's PING and one answers with PONG
    assert sorted(type(r).__name__ for r in (ra, rb)) == ["Nothing", "Reply"]
    responder, initiator, pong = (a, b, ra) if isinstance(ra, Reply) else (b, a, rb)
    assert isinstance(pong, Reply)
    done = initiator.handle_message(pong.data)
    assert isinstance(done, Initialized) and done.reply is not None
    fin = responder.handle_message(done.reply)
    assert isinstance(fin, Initialized) and fin.reply is not None
    assert initiator.handle_message(fin.reply) == Nothing()
    assert initiator.handshake_initiator and not responder.handshake_initiator
    assert responder.handle_message(initiator.send_message(0, b"z")) == Message(0, b"z")


def test_wrong_key_rejected() -> None:
    other = CryptoConfig(Identity.from_config(password="wrongpass"), ALGS, False)
    _, ping = PeerCrypto.initiator(other, b"A" * 16, b"", random.Random(6))
    b = PeerCrypto.responder(CFG, b"B" * 16, b"", random.Random(7))
    with pytest.raises(CryptoError, match="untrusted"):
        b.handle_message(ping)
    assert not b.is_ready


def test_tampered_message_rejected() -> None:
    _, ping = PeerCrypto.initiator(CFG, b"A" * 16, b"", random.Random(6))
    b = PeerCrypto.responder(CFG, b"B" * 16, b"", random.Random(7))
    bad = bytearray(ping)
    bad[50] ^= 4
    with pytest.raises(CryptoError):
        b.handle_message(bytes(bad))
    assert isinstance(b.handle_message(ping), Reply)


def test_own_ping_fed_back() -> None:
    a, ping = PeerCrypto.initiator(CFG, b"A" * 16, b"", random.Random(8))
    with pytest.raises(InitFatal, match="self"):
        a.handle_message(ping)


def test_tampered_and_replayed_frames() -> None:
    a, b, _ = connect(seed=9)
    f1, f2, f3 = (a.send_message(0, bytes([i])) for i in range(3))
    bad = bytearray(f1)
    bad[9] ^= 1
    with pytest.raises(CryptoError):
        b.handle_message(bytes(bad))
    assert b.handle_message(f3) == Message(0, b"\x02")
    assert b.handle_message(f1) == Message(0, b"\x00")  # reordered, inside the window
    with pytest.raises(ReplayError, match="Duplicate"):
        b.handle_message(f1)  # duplicate inside the window: the original accepts it (quirk 16)
    b.every_tick()
    assert b.handle_message(f2) == Message(0, b"\x01")
    b.every_tick()
    for old in (f1, f2, f3):
        with pytest.raises(CryptoError, match="Old nonce"):
            b.handle_message(old)
    assert b.handle_message(a.send_message(0, b"new")) == Message(0, b"new")


def _deliver(dst: PeerCrypto, data: bytes | None) -> None:
    if data is not None:
        assert dst.handle_message(data) == Nothing()  # only ROTATION messages come from ticks


@pytest.mark.parametrize("alg", [Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20])
def test_1000_rounds_across_rotations(alg: Algorithm) -> None:
    cfg = CryptoConfig(IDENT, [(alg, 100.0)], False)
    a, b, _ = connect(cfg, seed=10)
    slots_a, slots_b = set(), set()
    switches = 0
    last = (a.send_slot, b.send_slot)
    for i in range(1000):
        payload = i.to_bytes(4, "big")
        assert b.handle_message(a.send_message(1, payload)) == Message(1, payload)
        assert a.handle_message(b.send_message(0, payload)) == Message(0, payload)
        _deliver(b, a.every_tick())
        _deliver(a, b.every_tick())
        slots_a.add(a.send_slot)
        slots_b.add(b.send_slot)
        if (a.send_slot, b.send_slot) != last:
            switches += 1
            last = (a.send_slot, b.send_slot)
    # 1000 ticks = 8 cycles of 120. Each side switches to the keys the *other* side confirmed:
    # A (handshake initiator) to odd ids -> slots 3, 1; B (rotation initiator) to even ids -> 2, 0
    # (spec 7.1 live check: "0 -> 2 -> 0 -> 2" and "0 -> 3 -> 1").
    assert slots_a == {0, 1, 3} and slots_b == {0, 2}
    assert switches >= 8
    assert a.ticks_since_key_switch < 240 and b.ticks_since_key_switch < 240


@pytest.mark.parametrize("seed", range(3))
def test_rotation_with_lost_messages(seed: int) -> None:
    """Rotation messages dropped at random: keys still rotate and no data frame ever fails."""
    a, b, _ = connect(seed=20 + seed)
    loss = random.Random(seed)
    switches_a = 0
    prev = a.send_slot
    for i in range(1500):
        payload = i.to_bytes(4, "big")
        assert b.handle_message(a.send_message(0, payload)) == Message(0, payload)
        assert a.handle_message(b.send_message(0, payload)) == Message(0, payload)
        for src, dst in ((a, b), (b, a)):
            out = src.every_tick()
            if out is not None and loss.random() >= 0.4:
                _deliver(dst, out)
        if a.send_slot != prev:
            switches_a += 1
            prev = a.send_slot
    assert switches_a >= 2


def test_rotation_frames_replayed_are_harmless() -> None:
    a, b, results = connect(seed=30)
    rot1 = results[2]
    assert isinstance(rot1, Initialized) and rot1.reply is not None
    with pytest.raises(ReplayError):
        a.handle_message(rot1.reply)  # duplicate inside the window: the original ignores it by id
    for _ in range(119):
        assert a.every_tick() is None
        assert b.every_tick() is None
    rot2 = a.every_tick()
    assert rot2 is not None and len(rot2) == 99
    assert b.handle_message(rot2) == Nothing()
    assert b.send_slot == 2
    with pytest.raises(ReplayError):
        b.handle_message(rot2)  # the original processes it again, and nothing changes
    assert b.send_slot == 2
    assert a.handle_message(b.send_message(0, b"x")) == Message(0, b"x")


ERRORS = (CryptoError, InitError, InitFatal, DecodeError)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["fresh", "initiator", "session", "plain"]))
def test_random_datagrams_never_crash(data: bytes, state: str) -> None:
    if state == "fresh":
        peer = PeerCrypto.responder(CFG, b"B" * 16, b"", random.Random(1))
    elif state == "initiator":
        peer, _ = PeerCrypto.initiator(CFG, b"A" * 16, b"", random.Random(1))
    elif state == "session":
        peer, _, _ = connect(seed=1)
    else:
        peer, _, _ = connect(PLAIN_CFG, seed=1)
    for datagram in (data, b"\xff" + data, b"\x00" + data):
        with contextlib.suppress(*ERRORS):
            result = peer.handle_message(datagram)
            assert isinstance(result, Message | Reply | Initialized | Nothing)
