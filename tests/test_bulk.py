"""The batch data path (core/bulk.py) against the per-datagram path of the node: what a peer's
frames do to the peer's state and to the drop log must not depend on how they were read."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from vpncloud.core.messages import MSG_DATA, MSG_ROTATION
from vpncloud.core.types import SocketAddr
from vpncloud.fastpath import superpacket as sp
from vpncloud.sim.harness import Harness, SimNode, ipv4_packet

FEATURES = sp.FEATURE_TCP | sp.FEATURE_UDP


def _pair(seed: int) -> tuple[Harness, SimNode, SimNode]:
    """Two connected nodes that take super-packets."""
    h = Harness(seed=seed)
    a = h.add_node("a")
    c = h.add_node("c")
    a.node.enable_super_packets(FEATURES, 1452)
    c.node.enable_super_packets(FEATURES, 1452)
    h.connect(a, c)
    assert h.run_until(h.full_mesh, timeout=10)
    h.run_for(1)
    return h, a, c


def _feed(h: Harness, node: SimNode, frames: list[bytes], addr: SocketAddr, path: str) -> None:
    """Frames of equal length (the last may be shorter) read one by one, as a list or as a GRO train."""
    if path == "datagram":
        for frame in frames:
            node.node.receive_datagram(frame, addr, h.now)
    elif path == "datagrams":
        node.node.receive_datagrams(frames, addr, h.now)
    else:
        node.node.receive_train(b"".join(frames), len(frames[0]), addr, h.now)
    h._flush(node)


def _data_frames(a: SimNode, c: SimNode, n: int) -> list[bytes]:
    crypto = a.node.peers[c.addr].crypto
    return [
        crypto.send_message(MSG_DATA, ipv4_packet(a.vpn_ip, c.vpn_ip, bytes([i]) * 600, 6)) for i in range(n)
    ]


def _super_frames(a: SimNode, c: SimNode) -> list[bytes]:
    """The slices of one super-packet from ``a`` to ``c``."""
    from test_superpacket import tcp_super

    a.node.receive_super_packet(tcp_super(a.vpn_ip, c.vpn_ip, 20000), list, 0.0)
    ((train, addr),) = a.node.take_output()
    assert addr == c.addr
    return train.datagrams()  # type: ignore[no-any-return,union-attr]


@pytest.mark.parametrize(
    ("path", "frames"),
    [
        ("datagram", _data_frames),
        ("datagrams", _data_frames),
        ("train", _data_frames),
        ("datagrams", _super_frames),
        ("train", _super_frames),
    ],
)
def test_bulk_traffic_counts_as_hearing_from_the_peer(
    path: str, frames: Callable[[SimNode, SimNode], list[bytes]]
) -> None:
    """A peer that only sends bulk traffic is heard from like one that sends single datagrams (else
    the initiator keeps probing it with keepalives after the handshake, node.PENG_PROBE_TICKS)."""
    h, a, c = _pair(5)
    got = frames(a, c) if frames is _super_frames else frames(a, c, 8)  # type: ignore[call-arg]
    peer = c.node.peers[a.addr]
    peer.heard = False  # as right after a handshake that c started, before a's first session frame
    before = len(c.device_payloads())
    _feed(h, c, got, a.addr, path)
    assert len(c.device_payloads()) > before  # the frames did arrive
    assert peer.heard


def test_frames_that_fail_do_not_count_as_hearing_from_the_peer() -> None:
    h, a, c = _pair(6)
    forged = [bytes((0,)) + bytes(len(f) - 1) for f in _data_frames(a, c, 6)]
    peer = c.node.peers[a.addr]
    peer.heard = False
    for path in ("datagrams", "train"):
        _feed(h, c, forged, a.addr, path)
        assert not peer.heard


@pytest.mark.parametrize("path", ["datagrams", "train"])
def test_a_malformed_message_in_a_batch_is_dropped_like_a_single_one(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A session message that authenticates but does not decode (here a rotation message with a
    bad key length) inside a batch is counted and logged through the node's drop log, exactly as
    when it arrives alone."""
    results = []
    for way in ("datagram", path):
        h, a, c = _pair(7)  # the same seed: the same keys, nonces and earlier drops for both ways
        crypto = a.node.peers[c.addr].crypto
        frames = _data_frames(a, c, 6)
        size = len(frames[0]) - 1 - 24  # the rotation frame as long as the others (a train)
        bad = [crypto.send_message(MSG_ROTATION, bytes(size)) for _ in range(2)]
        frames[1:1] = bad[:1]
        frames[4:4] = bad[1:]
        invalid = c.invalid_packets()
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="vpncloud.node"):
            _feed(h, c, frames, a.addr, way)
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if "rotation" in r.getMessage().lower()]
        results.append(
            (c.invalid_packets() - invalid, logged, c.node._drops.suppressed, c.device_payloads()[-6:])
        )
    single, batch = results
    # the first drop of the interval is logged in full at error level, the second is counted
    assert single[0] == 2 and [level for level, _ in single[1]] == [logging.ERROR]
    assert sum(single[2].values()) >= 1
    assert batch == single
