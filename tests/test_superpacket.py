"""T2 super-packets and the batch data path in the core (sans-I/O, simulated network).

* The capability is one extra NODE_INFO part that the original's lenient decoder skips; with the
  capability off our NODE_INFO is byte-identical to before.
* Between two capable nodes a super-packet arrives as one device write, unchanged; a node without the
  capability (the original, simulated by ours with it switched off) gets ordinary DATA messages, one
  packet each, and never sees a slice.
* Reassembly copes with any split/merge/interleaving of slices, duplicates and losses; forged slices
  and bad virtio headers are dropped cleanly.
* The batch methods (receive_packets / receive_datagrams) behave exactly like the per-packet ones.
"""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncloud.core.messages import NodeInfo
from vpncloud.core.types import DeviceType, Mode, Range, SocketAddr
from vpncloud.fastpath import superpacket as sp
from vpncloud.sim.harness import Harness, SimNode, ethernet_frame, ipv4_packet, ipv6_packet

FEATURES = sp.FEATURE_TCP | sp.FEATURE_UDP
MAX_DGRAM = 1452


def tcp_super(src: str, dst: str, nbytes: int, mss: int = 1375) -> bytes:
    """A TSO read from a TUN: virtio header + IPv4/TCP super-packet (checksum = pseudo sum)."""
    payload = random.Random(nbytes).randbytes(nbytes)
    tcp = struct.pack("!HHLLBBHHH", 40000, 5201, 1, 2, 5 << 4, 0x18, 500, 0, 0) + payload
    ip = bytearray(ipv4_packet(src, dst, tcp, proto=6))
    hdr = struct.pack("<BBHHHH", 1, 1, 40, mss, 20, 16)
    return hdr + bytes(ip)


def mesh(h: Harness, nodes: list[SimNode]) -> None:
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=10)
    h.run_for(1)


def test_features_part_is_skipped_by_lenient_decoding() -> None:
    info = NodeInfo(node_id=bytes(range(16)), claims=[Range.parse("10.0.0.0/24")], peer_timeout=300)
    plain = info.encode()
    assert sp.add_features(plain, 0) == plain
    ext = sp.add_features(plain, FEATURES)
    assert ext != plain and ext[-1] == 0
    assert NodeInfo.decode(ext) == NodeInfo.decode(plain)
    assert sp.decode_features(ext) == FEATURES
    assert sp.decode_features(plain) == 0
    assert sp.decode_features(b"\x56\x00") == 0  # malformed: no features, no exception


def make_mesh(seed: int) -> tuple[Harness, SimNode, SimNode, SimNode]:
    h = Harness(seed=seed)
    a = h.add_node("a")
    b = h.add_node("b")
    c = h.add_node("c")  # capability off: behaves like the original
    a.node.enable_super_packets(FEATURES, MAX_DGRAM)
    b.node.enable_super_packets(FEATURES, MAX_DGRAM)
    mesh(h, [a, b, c])
    return h, a, b, c


def test_super_packet_between_capable_nodes_and_t1_to_the_original() -> None:
    h, a, b, c = make_mesh(90)
    invalid_b, invalid_c = b.invalid_packets(), c.invalid_packets()
    assert a.node.peers[b.addr].features == FEATURES
    assert a.node.peers[c.addr].features == 0
    called = []

    raw = tcp_super(a.vpn_ip, b.vpn_ip, 40000)

    def segments() -> list[bytes]:
        called.append(1)
        return [b"never"]

    a.node.receive_super_packet(raw, segments, h.now)
    h._flush(a)
    h.run_for(0.1)
    assert not called
    got = b.device_payloads()[-1]
    assert isinstance(got, sp.SuperPacket) and got == raw

    # to the original: the segments, as ordinary DATA messages, one packet each
    raw_c = tcp_super(a.vpn_ip, c.vpn_ip, 5000)
    segs = [ipv4_packet(a.vpn_ip, c.vpn_ip, bytes([i]) * 100, proto=6) for i in range(4)]
    before = len(c.device_payloads())
    a.node.receive_super_packet(raw_c, lambda: segs, h.now)
    h._flush(a)
    h.run_for(0.1)
    assert c.device_payloads()[before:] == segs
    assert c.invalid_packets() == invalid_c
    assert b.invalid_packets() == invalid_b


def test_received_super_packet_reaches_the_device_writer_without_a_copy() -> None:
    from vpncloud.fastpath import offload

    h, a, b, _c = make_mesh(97)
    raw = tcp_super(a.vpn_ip, b.vpn_ip, 30000)
    a.node.receive_super_packet(raw, lambda: [], h.now)
    (train, _addr), *_ = a.node.take_output()
    b.node.take_device_output()
    b.node.receive_train(bytes(train.buf), train.seg, a.addr, h.now)
    (item,) = b.node.take_device_output()
    # the offloading writer gets a view of the decrypted frame, not a 64 KB bytes copy
    assert type(item) is sp.SuperPacketView and isinstance(item.data, memoryview)
    (write,) = offload.coalesce([item])
    assert isinstance(write, memoryview) and write == raw
    # a packet in the same batch is still written behind it, in order
    small = ipv4_packet(a.vpn_ip, b.vpn_ip, b"x" * 20, proto=17)
    writes = offload.coalesce([item, small])
    assert [bytes(w) for w in writes] == [raw, offload.ZERO_HDR + small]
    # the general path (simulator, plain device) still gets bytes
    a.node.receive_super_packet(raw, lambda: [], h.now)
    (train, _addr), *_ = a.node.take_output()
    b.node.receive_train(bytes(train.buf), train.seg, a.addr, h.now)
    (got,) = b.node.packets_to_device()
    assert type(got) is sp.SuperPacket and got == raw


def test_slices_to_a_node_without_the_capability_are_dropped_cleanly() -> None:
    h, a, _b, c = make_mesh(91)
    invalid = c.invalid_packets()
    frame = b"\x00" * 3000
    for d in sp.split_frame(frame, 7, MAX_DGRAM):
        h.deliver_raw(c, d, a.addr)
    assert c.invalid_packets() == invalid + 3
    assert h.connected(c, a)


def test_forged_slices_fail_authentication() -> None:
    h, a, b, _ = make_mesh(92)
    for d in sp.split_frame(bytes(5000), 1, MAX_DGRAM):
        h.deliver_raw(b, d, a.addr)
    assert b.invalid_packets() >= 1
    # a genuine super-packet still goes through afterwards
    raw = tcp_super(a.vpn_ip, b.vpn_ip, 30000)
    a.node.receive_super_packet(raw, lambda: [], h.now)
    h._flush(a)
    h.run_for(0.1)
    assert b.device_payloads()[-1] == raw


@pytest.mark.parametrize("seed", range(5))
def test_reassembly_across_any_train_split(seed: int) -> None:
    rng = random.Random(seed)
    frames = [rng.randbytes(rng.randrange(1, 60000)) for _ in range(3)]
    datagrams = [sp.split_frame(f, 100 + i, MAX_DGRAM) for i, f in enumerate(frames)]
    # interleave the messages a little (two in flight) and duplicate a few slices
    stream = []
    for i in range(max(map(len, datagrams))):
        for msg in datagrams:
            if i < len(msg):
                stream.append(msg[i])
                if rng.random() < 0.1:
                    stream.append(msg[i])
    r = sp.Reassembler()
    done = [f for d in stream if (f := r.add(d)) is not None]
    assert sorted(done) == sorted(frames)
    assert len(r.pending) <= 1  # at most a late duplicate of a finished message


def test_reassembly_is_bounded_and_survives_losses() -> None:
    r = sp.Reassembler()
    for i in range(20):
        slices = sp.split_frame(bytes(10000), i, MAX_DGRAM)
        for d in slices[:-1]:  # the last one is lost
            assert r.add(d) is None
    assert len(r.pending) <= sp.MAX_PENDING
    assert r.dropped == 20 - sp.MAX_PENDING
    ok = sp.split_frame(b"x" * 9000, 99, MAX_DGRAM)
    assert [f for d in ok if (f := r.add(d)) is not None] == [b"x" * 9000]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_reassembly_random_input(datagrams: list[bytes]) -> None:
    r = sp.Reassembler()
    for d in datagrams:
        with contextlib.suppress(sp.SuperPacketError):
            r.add(bytes([sp.SLICE_MARK]) + d)
    assert len(r.pending) <= sp.MAX_PENDING


def test_check_super_payload() -> None:
    good = tcp_super("10.0.0.1", "10.0.0.2", 5000)[:]
    sp.check_super_payload(good, sp.FEATURE_TCP)
    bad = [
        b"\x01" * 12,  # too short
        bytes([0x80]) + good[1:],  # unknown flag
        good[:1] + bytes([9]) + good[2:],  # unknown GSO type
        good[:1] + bytes([5]) + good[2:],  # UDP type on a TCP packet
        good[:6] + struct.pack("<H", 65000) + good[8:],  # csum_start out of range
    ]
    for p in bad:
        with pytest.raises(sp.SuperPacketError):
            sp.check_super_payload(p, FEATURES)
    with pytest.raises(sp.SuperPacketError):
        sp.check_super_payload(good, sp.FEATURE_UDP)  # TCP not announced locally


def test_bad_super_message_from_a_peer_is_dropped() -> None:
    h, a, b, _ = make_mesh(93)
    invalid = b.invalid_packets()
    peer = a.node.peers[b.addr]
    frame = peer.crypto.send_message(sp.MSG_SUPER, b"\x00\x09" + bytes(60))  # bad GSO type
    for d in sp.split_frame(frame, 5, MAX_DGRAM):
        h.deliver_raw(b, d, a.addr)
    assert b.invalid_packets() == invalid + 1
    assert not [p for p in b.device_payloads() if isinstance(p, sp.SuperPacket)]


def test_batch_methods_equal_per_packet_path() -> None:
    h, a, _b, c = make_mesh(94)
    packets = [ipv4_packet(a.vpn_ip, c.vpn_ip, bytes([i]) * (100 + i), proto=6) for i in range(10)]
    a.node.receive_packets(packets, h.now)
    out = a.node.datagrams_to_send()
    assert len(out) == 10 and all(addr == c.addr for _, addr in out)
    before_dev = len(c.device_payloads())
    before_in = c.node.traffic.peers[a.addr].in_packets
    invalid = c.invalid_packets()
    c.node.receive_datagrams([d for d, _ in out] + [b"\x01garbage" * 3], a.addr, h.now)
    h._flush(c)
    assert c.device_payloads()[before_dev:] == packets
    assert c.node.traffic.peers[a.addr].in_packets - before_in == 11
    pair = c.node.traffic.payload[(packets[0][12:16], packets[0][16:20])]
    assert pair.in_packets == 10 and pair.in_bytes == sum(map(len, packets))
    sent = a.node.traffic.payload[(packets[0][16:20], packets[0][12:16])]
    assert sent.out_packets == 10 and sent.out_bytes == sum(map(len, packets))
    assert c.invalid_packets() == invalid + 1
    # unknown destination: dropped like receive_packet does
    dropped = a.dropped_payload_packets()
    a.node.receive_packets([ipv4_packet(a.vpn_ip, "10.42.0.1", b"x")] * 3, h.now)
    assert a.dropped_payload_packets() == dropped + 3


def _tap_mesh(seed: int, mode: Mode, vlan: int | None) -> tuple[Harness, SimNode, SimNode, SimNode]:
    h = Harness(seed=seed)
    nodes = [h.add_node(n, device_type=DeviceType.TAP, mode=mode) for n in "abc"]
    mesh(h, nodes)
    a, b, c = nodes
    # b speaks first, so a switch at a has learned b's MAC (in that VLAN)
    h.send_packet(b, a, b"hello", vlan=vlan)
    h.run_for(1)
    return h, a, b, c


@pytest.mark.parametrize("mode", [Mode.SWITCH, Mode.HUB])
@pytest.mark.parametrize("vlan", [None, 7])
def test_batch_frames_equal_per_frame_path(mode: Mode, vlan: int | None) -> None:
    """TAP: the frames of one TSO read go through the batch path (one lookup for all) and give
    the same datagrams, byte for byte, and the same counters as receive_packet one by one; a hub,
    and a switch for an unknown MAC, still floods every frame to every peer."""
    results = []
    for batch in (True, False):
        h, a, b, c = _tap_mesh(300, mode, vlan)  # same seed: same keys and nonces in both runs
        frames = [ethernet_frame(b.mac, a.mac, bytes([i]) * (200 + i), vlan=vlan) for i in range(10)]
        unknown = [ethernet_frame(bytes.fromhex("02aa00000001"), a.mac, b"x" * 60, vlan=vlan)] * 3
        if batch:
            a.node.receive_packets(frames, h.now)
            a.node.receive_packets(unknown, h.now)
        else:
            for f in frames + unknown:
                a.node.receive_packet(f, h.now)
        out = a.node.datagrams_to_send()
        t = a.node.traffic
        results.append((out, sorted((k, v.out_packets, v.out_bytes) for k, v in t.payload.items())))
    assert results[0] == results[1]
    out = results[0][0]
    to_b = sum(1 for _, addr in out if addr == b.addr)
    to_c = sum(1 for _, addr in out if addr == c.addr)
    if mode is Mode.SWITCH:
        assert (to_b, to_c) == (13, 3)  # learned unicast, the unknown MAC flooded
    else:
        assert (to_b, to_c) == (13, 13)


def test_batch_stops_the_fast_path_after_close() -> None:
    h, a, _b, c = make_mesh(95)
    p1 = ipv4_packet(a.vpn_ip, c.vpn_ip, b"before", proto=6)
    p2 = ipv4_packet(a.vpn_ip, c.vpn_ip, b"after", proto=6)
    crypto = a.node.peers[c.addr].crypto
    frames = [
        crypto.send_message(0, p1),
        crypto.send_message(0xFF, b""),  # CLOSE
        crypto.send_message(0, p2),
    ]
    before = len(c.device_payloads())
    c.node.receive_datagrams(frames, a.addr, h.now)
    h._flush(c)
    assert c.device_payloads()[before:] == [p1]
    assert a.addr not in c.node.peers


def _stats(node: SimNode, peer_addr: object, pair: tuple[bytes, bytes]) -> tuple[int, int, int, int, int]:
    t = node.node.traffic
    entry = t.payload.get(pair)
    return (
        t.peers[peer_addr].in_packets,
        t.peers[peer_addr].in_bytes,
        entry.in_packets if entry else 0,
        entry.in_bytes if entry else 0,
        node.invalid_packets(),
    )


def _feed(h: Harness, node: SimNode, datagrams: list[bytes], seg: int, addr: SocketAddr, train: bool) -> None:
    """The datagrams as one GRO train (receive_train) or one by one (receive_datagram)."""
    if train:
        node.node.receive_train(b"".join(datagrams), seg, addr, h.now)
    else:
        for d in datagrams:
            node.node.receive_datagram(d, addr, h.now)
    h._flush(node)


@pytest.mark.parametrize("seed", range(12))
def test_train_rows_equal_per_datagram_path(seed: int) -> None:
    """A GRO train decrypted straight into rows (receive_train) gives the device exactly the packets,
    in order, and the same counters as receive_datagram one by one: also with a forged frame inside
    the train, a control message or a truncated frame as the (shorter) last datagram."""
    rng = random.Random(seed)
    size = rng.choice([60, 300, 1400])
    n = rng.randrange(2, 50)
    bad_at = rng.randrange(n + 1) if seed % 2 else None
    ending = ["data", "keepalive", "truncated", "short", "nodeinfo", "close"][seed % 6]
    if ending == "nodeinfo":
        size = 1400  # a GRO train's last datagram is never longer than the others
    results = []
    for use_train in (True, False):
        h, a, _b, c = make_mesh(200 + seed)  # same seed: same keys and nonces in both runs
        packets = [ipv4_packet(a.vpn_ip, c.vpn_ip, bytes([i]) * size, proto=6) for i in range(n)]
        crypto = a.node.peers[c.addr].crypto
        frames = [crypto.send_message(0, p) for p in packets]
        seg = len(frames[0])
        if bad_at is not None:
            frames.insert(bad_at, b"\x00" + bytes(seg - 1))  # fails authentication
        if ending == "keepalive":
            frames.append(crypto.send_message(2, b""))
        elif ending == "close":
            frames.append(crypto.send_message(0xFF, b""))
        elif ending == "nodeinfo":
            frames.append(crypto.send_message(1, a.node._node_info_bytes()))
        elif ending == "short":
            packets.append(ipv4_packet(a.vpn_ip, c.vpn_ip, b"tail", proto=6))
            frames.append(crypto.send_message(0, packets[-1]))
        elif ending == "truncated":
            frames[-1] = frames[-1][: seg - 5]
        before_dev = len(c.device_payloads())
        pair = (packets[0][12:16], packets[0][16:20])
        before = _stats(c, a.addr, pair)
        _feed(h, c, frames, seg, a.addr, use_train)
        got = c.device_payloads()[before_dev:]
        after = _stats(c, a.addr, pair)
        results.append((got, tuple(x - y for x, y in zip(after, before, strict=True))))
        want = packets[:-1] if ending == "truncated" else packets
        assert got == want
    assert results[0] == results[1]


@pytest.mark.parametrize("kind", ["v4", "v6", "two-pairs", "v4-then-v6", "one-not-data"])
def test_train_of_one_flow_equals_per_datagram_path(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check for a train of one flow (all DATA, one address pair) gives the same device
    packets and counters as the per-datagram path, and trains that are not one flow (two pairs,
    two IP versions, another message inside) are told apart."""
    from vpncloud.core import bulk

    seen: list[bool] = []
    one_pair = bulk._one_pair

    def spy(*args: object) -> bytes | None:
        key = one_pair(*args)  # type: ignore[arg-type]
        seen.append(key is not None)
        return key

    monkeypatch.setattr(bulk, "_one_pair", spy)
    results = []
    for use_train in (True, False):
        h, a, _b, c = make_mesh(300)
        v6 = ("fd00::1", "fd00::2")
        packets = []
        for i in range(12):
            body = bytes([i]) * 1000
            if kind == "v6" or (kind == "v4-then-v6" and i >= 6):
                packets.append(ipv6_packet(*v6, body[:980], next_header=6))
            elif kind == "two-pairs" and i % 3 == 2:
                packets.append(ipv4_packet(a.vpn_ip, "10.99.0.9", body, proto=6))
            else:
                packets.append(ipv4_packet(a.vpn_ip, c.vpn_ip, body, proto=6))
        crypto = a.node.peers[c.addr].crypto
        frames = [crypto.send_message(0, p) for p in packets]
        if kind == "one-not-data":
            frames[5] = crypto.send_message(2, bytes(len(packets[5])))  # a keepalive of the same size
        assert len({len(f) for f in frames}) == 1
        before_dev = len(c.device_payloads())
        _feed(h, c, frames, len(frames[0]), a.addr, use_train)
        t = c.node.traffic
        results.append(
            (
                c.device_payloads()[before_dev:],
                sorted((k, v.in_packets, v.in_bytes) for k, v in t.payload.items()),
                (t.peers[a.addr].in_packets, t.peers[a.addr].in_bytes, c.invalid_packets()),
            )
        )
    assert results[0] == results[1]
    want = [p for i, p in enumerate(packets) if not (kind == "one-not-data" and i == 5)]
    assert results[0][0] == want
    pairs = {k for k, _n, _b in results[0][1] if _n}
    assert len(pairs) == (2 if kind in ("two-pairs", "v4-then-v6") else 1)
    # the train of one flow took the numpy check, the others the loop
    assert seen == [kind in ("v4", "v6")]


@pytest.mark.parametrize("mode", [Mode.SWITCH, Mode.HUB])
@pytest.mark.parametrize("seed", range(8))
def test_tap_train_rows_equal_per_datagram_path(mode: Mode, seed: int) -> None:
    """TAP: a GRO train of frames decrypted into rows gives the device the same frames, the same
    counters and the same learned MAC addresses as receive_datagram one by one: frames of two
    sources, VLAN-tagged and untagged, runts that are not frames, a forged datagram, a CLOSE."""
    rng = random.Random(seed)
    size = rng.choice([60, 300, 1400])
    results = []
    for use_train in (True, False):
        h, a, _b, c = _tap_mesh(400 + seed, mode, None)
        other = bytes.fromhex("0200000000ee")  # a host behind a's bridge
        frames_in = []
        for i in range(rng.randrange(2, 40) if use_train else len(results[0][3])):
            src = other if (i // 5) % 2 else a.mac
            vlan = 7 if (i // 3) % 3 == 0 else None
            # equal frame sizes, as in a GRO train: an untagged frame carries 4 more bytes
            frames_in.append(ethernet_frame(c.mac, src, bytes([i]) * (size + (0 if vlan else 4)), vlan=vlan))
        if use_train:
            kinds = [rng.choice(["ok"] * 8 + ["forged"]) for _ in frames_in]
            ending = rng.choice(["data", "close", "keepalive", "runt"])
        else:
            kinds, ending = results[0][4], results[0][5]
        crypto = a.node.peers[c.addr].crypto
        datagrams = []
        for frame, kind in zip(frames_in, kinds, strict=True):
            datagram = crypto.send_message(0, frame)
            if kind == "forged":
                datagram = datagram[:8] + bytes(len(datagram) - 8)
            datagrams.append(datagram)
        # the last datagram of a GRO train may be shorter: a control message or a runt
        if ending == "close":
            datagrams.append(crypto.send_message(0xFF, b""))
        elif ending == "keepalive":
            datagrams.append(crypto.send_message(2, b""))
        elif ending == "runt":
            datagrams.append(crypto.send_message(0, frames_in[0][:10]))
        sizes = {len(d) for d in datagrams[:-1]}
        assert len(sizes) == 1
        seg = sizes.pop()
        before = len(c.device_payloads())
        _feed(h, c, datagrams, seg, a.addr, use_train)
        t = c.node.traffic
        results.append(
            (
                c.device_payloads()[before:],
                sorted((k, v.in_packets, v.in_bytes) for k, v in t.payload.items()),
                (t.peers[a.addr].in_packets if a.addr in t.peers else 0, c.invalid_packets()),
                frames_in,
                kinds,
                ending,
                sorted(c.node.table._cache),
                a.addr in c.node.peers,
            )
        )
    assert results[0][:3] == results[1][:3]
    assert results[0][6:] == results[1][6:]
    assert results[0][0]  # something arrived
    if mode is Mode.SWITCH and results[0][7]:
        # every source MAC that reached the device was learned (VLAN id in front when tagged)
        learned = {k[-6:] for k in results[0][6]}
        assert {f[6:12] for f in results[0][0]} <= learned


def test_train_rows_reach_the_coalescer_as_one_write() -> None:
    """End to end in the core plus the device writer: the segments of one super-packet go out as
    one Train, come in as one GRO train and leave the coalescer as one GSO write equal to the
    original super-packet's payload."""
    from vpncloud.daemon.loop import _segmenter
    from vpncloud.fastpath import offload
    from vpncloud.fastpath.rows import PacketRows, Train

    h, a, b, _c = make_mesh(97)
    a.node.enable_super_packets(0, 0)
    raw = tcp_super(a.vpn_ip, b.vpn_ip, 1387 * 30 + 100, mss=1387)
    a.node.receive_super_packet(raw, _segmenter(raw), h.now)
    out = a.node.take_output()
    assert len(out) == 1 and type(out[0][0]) is Train
    train = out[0][0]
    b.node.receive_train(bytes(train.buf), train.seg, a.addr, h.now)
    items = b.node.take_device_output()
    assert len(items) == 1 and type(items[0]) is PacketRows and len(items[0]) == 31
    writes = offload.coalesce(items)
    assert len(writes) == 1
    hdr = offload.VNET_HDR.unpack(writes[0][:10])
    assert hdr[1] == offload.GSO_TCPV4 and hdr[3] == 1387
    packet = writes[0][10:]
    assert packet[40:] == raw[10 + 40 :]  # all the payload, in order
    # the same items through the per-packet coalescer give the same write
    assert offload.coalesce_slow(items[0].packets()) == writes


def test_split_frame_train_equals_split_frame() -> None:
    for size in (1, 1445, 1446, 60000):
        frame = random.Random(size).randbytes(size)
        train = sp.split_frame_train(frame, 77, MAX_DGRAM)
        assert train.datagrams() == sp.split_frame(frame, 77, MAX_DGRAM)


def test_whole_message_only_for_one_complete_message_in_order() -> None:
    frame = random.Random(3).randbytes(20000)
    slices = sp.split_frame(frame, 9, MAX_DGRAM)
    assert sp.whole_message(b"".join(slices), MAX_DGRAM) == frame
    other = sp.split_frame(frame, 10, MAX_DGRAM)
    for broken in (
        slices[:-1],  # incomplete
        slices[1:] + other[:1],  # tail of one message, head of the next
        [slices[0], slices[2], slices[1], *slices[3:]],  # out of order
        [*slices[:5], other[5], *slices[6:]],  # a slice of another message inside
        [bytes([0x57]) + s[1:] for s in slices],  # not slices
    ):
        assert sp.whole_message(b"".join(broken), MAX_DGRAM) is None


@pytest.mark.parametrize("split", ["whole", "two-messages", "halves"])
def test_super_packet_trains_reach_the_device_however_they_are_cut(split: str) -> None:
    """T2 receive path: a GRO train with exactly one super-packet skips reassembly; any other cut
    (the tail of one and the head of the next, a message over two reads) goes through it; the
    device gets every super-packet unchanged and the counters match the datagrams."""
    h, a, b, _c = make_mesh(98)
    raws = [tcp_super(a.vpn_ip, b.vpn_ip, n) for n in (30000, 41000)]
    trains = []
    for raw in raws:
        a.node.receive_super_packet(raw, lambda: pytest.fail("segmented"), h.now)
        out = a.node.take_output()
        assert len(out) == 1
        trains.append(out[0][0])
    seg = trains[0].seg
    dgrams = [d for t in trains for d in t.datagrams()]
    if split == "whole":
        reads = [t.datagrams() for t in trains]
    elif split == "two-messages":
        cut = trains[0].count - 3
        reads = [dgrams[:cut], dgrams[cut:]]
    else:
        half = len(dgrams) // 2
        reads = [dgrams[:half], dgrams[half:]]
    before = len(b.device_payloads())
    in_before = b.node.traffic.peers[a.addr].in_packets
    for read in reads:
        # a GRO read: equal datagrams with a shorter last one, else one read per datagram
        while read:
            k = 1
            while k < len(read) and len(read[k - 1]) == seg:
                k += 1
            b.node.receive_train(b"".join(read[:k]), seg, a.addr, h.now)
            read = read[k:]
    h._flush(b)
    assert b.device_payloads()[before:] == raws
    assert b.node.traffic.peers[a.addr].in_packets - in_before == len(dgrams)
    # whole messages never touch the reassembly state
    assert (b.node.peers[a.addr].reassembly is None) == (split == "whole")


@pytest.mark.parametrize("size", [0, 1, 1444, 1445, 1446, 4 * 1445 - 1, 4 * 1445, 4 * 1445 + 1, 60000, 65535])
@pytest.mark.parametrize("max_dgram", [MAX_DGRAM, 200])
def test_numpy_slicing_equals_the_pure_path(
    size: int, max_dgram: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numpy copies (one strided copy each way) give the same bytes as the join-based
    reference, for every slice count around the threshold and a shorter or full last slice."""
    frame = random.Random(size).randbytes(size)
    try:
        fast = sp.split_frame_train(frame, 0xDEADBEEF, max_dgram)
    except ValueError:
        pytest.skip("more than 255 slices")
    fast_whole = sp.whole_message(bytes(fast.buf), max_dgram)
    monkeypatch.setattr(sp, "_np", None)
    ref = sp.split_frame_train(frame, 0xDEADBEEF, max_dgram)
    assert (bytes(fast.buf), fast.seg, fast.count) == (bytes(ref.buf), ref.seg, ref.count)
    ref_whole = sp.whole_message(bytes(ref.buf), max_dgram)
    assert fast_whole == ref_whole
    assert ref_whole == (frame if ref.count >= 2 else None)


@pytest.mark.parametrize("msg_type", [0x00, 0x02])  # DATA and ROTATION, never sent as slices
@pytest.mark.parametrize("whole", [True, False])
def test_other_message_types_in_slices_are_dropped(msg_type: int, whole: bool) -> None:
    """A sliced frame that authenticates but is not a super-packet is dropped whole and counted,
    on the whole-train path and through reassembly, and the session goes on."""
    h, a, b, _ = make_mesh(99)
    peer_b = b.node.peers[a.addr]
    rotation_before = peer_b.crypto.rotation_info()
    invalid = b.invalid_packets()
    devices = len(b.device_payloads())
    frame = a.node.peers[b.addr].crypto.send_message(msg_type, bytes(range(256)) * 40)
    dgrams = sp.split_frame(frame, 11, MAX_DGRAM)
    assert len(dgrams) >= sp.NP_MIN_SLICES
    if whole:
        b.node.receive_train(b"".join(dgrams), len(dgrams[0]), a.addr, h.now)
    else:
        for d in dgrams:
            h.deliver_raw(b, d, a.addr)
    h._flush(b)
    assert b.invalid_packets() == invalid + 1
    assert len(b.device_payloads()) == devices
    assert peer_b.crypto.rotation_info() == rotation_before
    # the session is unharmed: a genuine super-packet follows
    raw = tcp_super(a.vpn_ip, b.vpn_ip, 30000)
    a.node.receive_super_packet(raw, lambda: pytest.fail("segmented"), h.now)
    h._flush(a)
    h.run_for(0.1)
    assert b.device_payloads()[-1] == raw
