"""Trusted-key expiry: Identity's expiry map, the node's refusal at handshake time, closing sessions."""

from __future__ import annotations

import random

from vpncloud.core.identity import Identity
from vpncloud.core.node import PeerDisconnected
from vpncloud.core.peer_crypto import CryptoConfig
from vpncloud.core.primitives import sha256
from vpncloud.sim.harness import DEFAULT_ALGORITHMS, Harness, SimNode

WALL = 1_800_000_000.0  # a fixed "Unix time"; the core never reads a clock


def seeds() -> tuple[bytes, bytes]:
    r = random.Random(99)
    return r.randbytes(32), r.randbytes(32)


def test_identity_expiry_map() -> None:
    sa, sb = seeds()
    a, b = Identity(sa), Identity(sb)
    ident = Identity(sa, [a.public_key, b.public_key], {b.public_key: WALL})
    salt = b"salt"
    h = sha256(b.public_key + salt)[:4]
    assert ident.find_trusted(salt, h) == b.public_key  # no wall time: no expiry
    assert ident.find_trusted(salt, h, WALL - 1) == b.public_key
    assert ident.find_trusted(salt, h, WALL) is None
    assert not ident.is_expired(a.public_key, WALL + 1e9)
    copy = a.with_expiry({b.public_key: 1.0, a.public_key: 5.0})
    assert copy.expiry == {a.public_key: 5.0}  # b is not trusted by a plain identity: ignored
    assert "seed" not in repr(ident) and sa.hex() not in repr(ident)


def key_pair(h: Harness, expiry_at_b: float | None) -> tuple[SimNode, SimNode]:
    sa, sb = seeds()
    pa, pb = Identity(sa).public_key, Identity(sb).public_key
    both = [pa, pb]
    ia = Identity(sa, both)
    ib = Identity(sb, both, {pa: expiry_at_b} if expiry_at_b is not None else None)
    a = h.add_node(crypto=CryptoConfig(ia, list(DEFAULT_ALGORITHMS)))
    b = h.add_node(crypto=CryptoConfig(ib, list(DEFAULT_ALGORITHMS)))
    return a, b


def test_valid_key_connects_expired_key_is_refused() -> None:
    h = Harness(seed=41)
    a, b = key_pair(h, expiry_at_b=WALL + 100)
    b.node.set_wall_time(WALL)
    h.run_for(0.5)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)

    # time passes on the wall clock: b closes the session at its next tick and refuses new ones
    b.node.set_wall_time(WALL + 100)
    assert h.run_until(lambda: not h.connected(b, a), timeout=3)
    assert b.events_of(PeerDisconnected)
    assert h.run_until(lambda: not h.connected(a, b), timeout=3)  # a got the CLOSE
    h.connect(a, b)  # a tries again (PING retransmitted every tick); b never accepts
    h.run_for(20)
    assert not h.connected(b, a)
    assert b.node.expired_key_refusals > 0
    assert b.node.status(h.now)["security"]["expired_key_refusals"] == b.node.expired_key_refusals


def test_expired_key_refused_from_the_start_and_without_wall_time_accepted() -> None:
    h = Harness(seed=42)
    a, b = key_pair(h, expiry_at_b=WALL - 1)
    b.node.set_wall_time(WALL)
    h.run_for(0.5)
    h.connect(a, b)
    h.run_for(5)
    assert not h.connected(b, a) and not h.connected(a, b)
    assert b.node.expired_key_refusals >= 1

    h2 = Harness(seed=43)
    a2, b2 = key_pair(h2, expiry_at_b=WALL - 1)  # same map, but the daemon never passed wall time
    h2.run_for(0.5)
    h2.connect(a2, b2)
    assert h2.run_until(h2.full_mesh, timeout=5)
