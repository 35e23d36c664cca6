"""Offload fast paths (vpncloud/fastpath/offload.py) against slow, obviously-correct references.

* TSO/USO segmentation and checksums: every segment equals the one a naive per-segment builder makes
  (IPv4 and IPv6, TCP and UDP, options, odd and even segment sizes, FIN/PSH/CWR handling, seq wrap).
* Partial checksums (NEEDS_CSUM) are completed like the kernel would.
* Userspace GRO: coalescing never changes what the receiver gets (re-segmenting every write gives
  back exactly the input), whatever the GRO trains look like (split or merged super-packets, several
  flows interleaved, gaps, flags); the merge of a decrypted train (the coalesce_rows kernel, C and
  its numpy twin) and the numpy check of single packets equal the per-packet path.
* Bad input: only OffloadError, never a crash.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import struct
from types import ModuleType

import pytest
from conftest import NO_C, c_kernels
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncloud import fastpath
from vpncloud.fastpath import offload as o
from vpncloud.fastpath.rows import PacketRows

# --------------------------------------------------------------------------------------- references


def ref_sum(data: bytes) -> int:
    """Naive ones'-complement sum, folded to 16 bits (0xFFFF for a zero sum of non-empty data)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_csum(data: bytes) -> int:
    return (~ref_sum(data)) & 0xFFFF


def l4_ok(packet: bytes) -> bool:
    """The TCP/UDP checksum of a complete packet verifies."""
    v = packet[0] >> 4
    if v == 4:
        ihl = (packet[0] & 15) * 4
        src, dst, proto = packet[12:16], packet[16:20], packet[9]
        if ref_sum(packet[:ihl]) != 0xFFFF:
            return False
    else:
        ihl, src, dst, proto = 40, packet[8:24], packet[24:40], packet[6]
    seg = packet[ihl:]
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    return ref_sum(pseudo + seg) == 0xFFFF


def ip_header(v6: bool, proto: int, payload_len: int, ident: int = 0x1234, tos: int = 0) -> bytes:
    if v6:
        return struct.pack("!IHBB", 0x60000000 | (tos << 20), payload_len, proto, 64) + (
            ipaddress.IPv6Address("fd00::1").packed + ipaddress.IPv6Address("fd00::2").packed
        )
    h = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            tos,
            20 + payload_len,
            ident,
            0x4000,
            64,
            proto,
            0,
            bytes([10, 0, 0, 1]),
            bytes([10, 0, 0, 2]),
        )
    )
    struct.pack_into("!H", h, 10, ref_csum(bytes(h)))
    return bytes(h)


def tcp_packet(
    v6: bool,
    payload: bytes,
    seq: int = 1000,
    flags: int = 0x10,
    options: bytes = b"",
    ident: int = 0x1234,
    ack: int = 555,
    window: int = 500,
    sport: int = 40000,
) -> bytes:
    """A complete TCP packet with correct checksums."""
    doff = (20 + len(options)) // 4
    tcp = bytearray(
        struct.pack("!HHLLBBHHH", sport, 5201, seq & 0xFFFFFFFF, ack, doff << 4, flags, window, 0, 0)
    )
    tcp += options + payload
    ip = ip_header(v6, 6, len(tcp), ident)
    src, dst = (ip[8:24], ip[24:40]) if v6 else (ip[12:16], ip[16:20])
    struct.pack_into("!H", tcp, 16, ref_csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + bytes(tcp)))
    return ip + bytes(tcp)


def udp_packet(v6: bool, payload: bytes, ident: int = 0x1234) -> bytes:
    udp = bytearray(struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0)) + payload
    ip = ip_header(v6, 17, len(udp), ident)
    src, dst = (ip[8:24], ip[24:40]) if v6 else (ip[12:16], ip[16:20])
    c = ref_csum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + bytes(udp)) or 0xFFFF
    struct.pack_into("!H", udp, 6, c)
    return ip + bytes(udp)


def ref_segment_tcp(super_packet: bytes, mss: int) -> list[bytes]:
    """What the kernel's TSO does, one segment at a time, checksums from scratch."""
    v6 = super_packet[0] >> 4 == 6
    iphl = 40 if v6 else (super_packet[0] & 15) * 4
    doff = (super_packet[iphl + 12] >> 4) * 4
    hl = iphl + doff
    payload = super_packet[hl:]
    sport = struct.unpack_from("!H", super_packet, iphl)[0]
    seq0, ack = struct.unpack_from("!LL", super_packet, iphl + 4)
    flags = super_packet[iphl + 13]
    window = struct.unpack_from("!H", super_packet, iphl + 14)[0]
    options = super_packet[iphl + 20 : hl]
    ident = 0 if v6 else struct.unpack_from("!H", super_packet, 4)[0]
    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        fl = flags
        if i < len(chunks) - 1:
            fl &= ~0x09
        if i > 0:
            fl &= ~0x80
        ident_i = (ident + i) & 0xFFFF
        out.append(tcp_packet(v6, chunk, seq0 + i * mss, fl, options, ident_i, ack, window, sport))
    return out


def vnet(gso_type: int, gso_size: int, hdr_len: int, csum_start: int, csum_offset: int) -> bytes:
    return o.VNET_HDR.pack(o.F_NEEDS_CSUM, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def as_tso(packet: bytes) -> bytes:
    """The packet as the TUN hands it over with TSO: TCP checksum = pseudo-header sum only."""
    v6 = packet[0] >> 4 == 6
    iphl = 40 if v6 else 20
    p = bytearray(packet)
    if not v6:
        struct.pack_into("!H", p, 2, 0 if len(p) > 65535 else len(p))
    src, dst = (p[8:24], p[24:40]) if v6 else (p[12:16], p[16:20])
    struct.pack_into("!H", p, iphl + 16, ref_sum(bytes(src + dst) + struct.pack("!BBH", 0, 6, len(p) - iphl)))
    return bytes(p)


OPTIONS = [b"", b"\x01\x01\x08\x0a" + bytes(range(8)), b"\x01\x01\x04\x02"]


# --------------------------------------------------------------------------------------- TX


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("mss", [1375, 1376, 536, 1])
@pytest.mark.parametrize("options", OPTIONS)
def test_tso_segments_equal_reference(v6: bool, mss: int, options: bytes) -> None:
    rng = random.Random(mss * 7 + len(options) + v6)
    size = min(mss * 43 + rng.randrange(mss), 60000) if mss > 1 else 37
    payload = rng.randbytes(size)
    full = tcp_packet(v6, payload, seq=0xFFFFF000, flags=0x18 | 0x80, options=options)
    iphl = 40 if v6 else 20
    hdr = vnet(o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss, iphl + 20 + len(options), iphl, 16)
    got = o.segment(hdr, as_tso(full))
    want = ref_segment_tcp(full, mss)
    assert got == want
    assert all(l4_ok(s) for s in got)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("mss", [1387, 1388, 536, 1])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("flags", [0x10, 0x18 | 0x80, 0x19])
def test_tso_rows_equal_reference(
    kernels: ModuleType, monkeypatch: pytest.MonkeyPatch, v6: bool, mss: int, options: bytes, flags: int
) -> None:
    """The row layout (the T1 fast path, tcp_rows of the C kernels and of the numpy twin) holds
    exactly the reference segments, each behind one free byte, for odd and even segment sizes,
    a short or a full last segment, seq wrap."""
    monkeypatch.setattr(fastpath, "tcp_rows", kernels.tcp_rows)
    monkeypatch.setattr(fastpath, "TCP_ROWS", True)
    rng = random.Random(mss * 11 + len(options) + v6 + flags)
    for size in (mss * 44, mss * 43 + rng.randrange(1, max(mss, 2))) if mss > 1 else (37,):
        payload = rng.randbytes(min(size, 60000))
        full = tcp_packet(v6, payload, seq=0xFFFFF000 + rng.randrange(4096), flags=flags, options=options)
        iphl = 40 if v6 else 20
        hdr = vnet(o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss, iphl + 20 + len(options), iphl, 16)
        rows = o.segment_any(hdr, as_tso(full))
        assert not isinstance(rows, list)
        want = ref_segment_tcp(full, mss)
        assert rows.packets() == want
        assert rows.stride == 1 + iphl + 20 + len(options) + mss
        assert all(l4_ok(s) for s in rows.packets())


def test_tso_rows_fall_back_without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither C kernels nor numpy: segment by segment, the same bytes."""
    monkeypatch.setattr(fastpath, "TCP_ROWS", False)
    full = tcp_packet(False, bytes(range(256)) * 20)
    hdr = vnet(o.GSO_TCPV4, 1000, 40, 20, 16)
    got = o.segment_any(hdr, as_tso(full))
    assert got == ref_segment_tcp(full, 1000)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size", [1400, 1399, 8])
def test_uso_segments_equal_reference(v6: bool, size: int) -> None:
    rng = random.Random(size)
    payload = rng.randbytes(size * 9 + 77)
    full = udp_packet(v6, payload)
    iphl = 40 if v6 else 20
    hdr = vnet(o.GSO_UDP_L4, size, iphl + 8, iphl, 6)
    got = o.segment(hdr, full)
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    want = [udp_packet(v6, c, (0x1234 + i) & 0xFFFF if not v6 else 0) for i, c in enumerate(chunks)]
    if v6:
        want = [udp_packet(v6, c) for c in chunks]
    assert got == want
    assert all(l4_ok(s) for s in got)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
@pytest.mark.parametrize("size", [0, 1, 2, 99, 1400])
def test_partial_checksum_is_completed(v6: bool, kind: str, size: int) -> None:
    payload = os.urandom(size)
    full = tcp_packet(v6, payload, flags=0x18) if kind == "tcp" else udp_packet(v6, payload)
    iphl = 40 if v6 else 20
    off = 16 if kind == "tcp" else 6
    partial = bytearray(full)
    src, dst = (full[8:24], full[24:40]) if v6 else (full[12:16], full[16:20])
    proto = 6 if kind == "tcp" else 17
    struct.pack_into(
        "!H", partial, iphl + off, ref_sum(src + dst + struct.pack("!BBH", 0, proto, len(full) - iphl))
    )
    hdr = o.VNET_HDR.pack(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, iphl, off)
    (got,) = o.segment(hdr, bytes(partial))
    assert got == full
    assert l4_ok(got)


def test_plain_packet_passes_unchanged() -> None:
    p = udp_packet(False, b"hello")
    assert o.segment(o.ZERO_HDR, p) == [p]


def test_payload_sums_numpy_and_python_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = os.urandom(70001)
    for mss in (1, 2, 3, 1375, 1376, 1387):
        for start in (0, 1, 52):
            n = min((len(buf) - start) // mss, 100)
            fast = o._payload_sums(buf, start, mss, n)
            monkeypatch.setattr(o, "_np", None)
            slow = o._payload_sums(buf, start, mss, n)
            monkeypatch.undo()
            assert (
                fast
                == slow
                == [ref_sum(buf[start + i * mss : start + (i + 1) * mss]) % 0xFFFF for i in range(n)]
            )


def test_segmentation_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    full = tcp_packet(False, os.urandom(20000), options=OPTIONS[1])
    hdr = vnet(o.GSO_TCPV4, 1376, 52, 20, 16)
    fast = o.segment(hdr, as_tso(full))
    monkeypatch.setattr(o, "_np", None)
    assert o.segment(hdr, as_tso(full)) == fast == ref_segment_tcp(full, 1376)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=10, max_size=10), st.binary(max_size=300))
def test_segment_bad_input_is_a_clean_drop(hdr: bytes, packet: bytes) -> None:
    with contextlib.suppress(o.OffloadError):
        o.segment(hdr, packet)


# --------------------------------------------------------------------------------------- RX


def expand(writes: list[bytes]) -> list[bytes]:
    """What the kernel makes of our device writes: GSO writes segmented, others as they are."""
    out = []
    for w in writes:
        hdr, pkt = w[:10], w[10:]
        if hdr == o.ZERO_HDR:
            out.append(pkt)
        else:
            flags, gso_type, hdr_len, gso_size, cstart, coff = o.VNET_HDR.unpack(hdr)
            assert flags == o.F_NEEDS_CSUM and gso_type in (o.GSO_TCPV4, o.GSO_TCPV6) and coff == 16
            v6 = gso_type == o.GSO_TCPV6
            iphl = 40 if v6 else 20
            assert cstart == iphl
            assert hdr_len == iphl + (pkt[iphl + 12] >> 4) * 4
            assert len(pkt) <= 65535
            if not v6:
                assert ref_sum(pkt[:20]) == 0xFFFF
            # the checksum field holds the pseudo-header sum for the whole length (not inverted)
            src, dst = (pkt[8:24], pkt[24:40]) if v6 else (pkt[12:16], pkt[16:20])
            pseudo = ref_sum(src + dst + struct.pack("!BBH", 0, 6, len(pkt) - iphl))
            assert struct.unpack_from("!H", pkt, iphl + 16)[0] == pseudo
            segs = ref_segment_tcp(pkt, gso_size)
            assert len(segs) >= 2
            out.extend(segs)
    return out


def flow_segments(
    v6: bool,
    nbytes: int,
    mss: int,
    seq: int,
    options: bytes = OPTIONS[1],
    sport: int = 40000,
    ident: int = 100,
    psh_last: bool = True,
) -> list[bytes]:
    payload = os.urandom(nbytes)
    chunks = [payload[i : i + mss] for i in range(0, nbytes, mss)]
    return [
        tcp_packet(
            v6,
            c,
            seq + i * mss,
            0x18 if psh_last and i == len(chunks) - 1 else 0x10,
            options,
            (ident + i) & 0xFFFF,
            sport=sport,
        )
        for i, c in enumerate(chunks)
    ]


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_one_super_packet(v6: bool) -> None:
    segs = flow_segments(v6, 43 * 1375 + 100, 1375, seq=0xFFFFFF00)
    writes = o.coalesce(segs)
    assert len(writes) == 1
    assert expand(writes) == segs
    assert o.coalesce_slow(segs) == writes


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_is_lossless_across_gro_trains(v6: bool) -> None:
    """Two super-packets of a flow plus another flow, cut into GRO trains at random points: however
    the trains fall, feeding them to one Coalescer and flushing at the end gives the same writes and
    the receiver gets exactly the input."""
    rng = random.Random(5)
    a1 = flow_segments(v6, 20 * 1300 + 5, 1300, seq=1, psh_last=False)
    a2 = flow_segments(v6, 30 * 1300, 1300, seq=1 + 20 * 1300 + 5, ident=100 + len(a1))
    b = flow_segments(v6, 5 * 1300, 1300, seq=777, sport=40001)
    stream = a1 + a2 + b
    whole = o.coalesce(stream)
    assert expand(whole) == stream
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 5))
        out: list[bytes] = []
        c = o.Coalescer(out)
        last = 0
        for cut in [*cuts, len(stream)]:
            for p in stream[last:cut]:  # one GRO train
                c.add(p)
            last = cut
        c.flush()
        assert out == o.coalesce_slow(stream)
        assert expand(out) == stream


def test_coalesce_respects_limits_and_boundaries() -> None:
    segs = flow_segments(False, 100 * 1000, 1000, seq=5, psh_last=False)  # > 64 segments, > 64 KB
    writes = o.coalesce(segs)
    assert len(writes) >= 2
    assert expand(writes) == segs
    # a gap, a different ack, a SYN and a PSH in the middle all end runs
    mixed = flow_segments(False, 10 * 1000, 1000, seq=5, psh_last=False)
    gap = flow_segments(False, 5 * 1000, 1000, seq=5 + 11 * 1000, ident=500, psh_last=False)
    syn = [tcp_packet(False, b"", 9, 0x02)]
    other_ack = [tcp_packet(False, os.urandom(1000), 5 + 16 * 1000, 0x10, OPTIONS[1], ack=999)]
    psh_mid = flow_segments(False, 4 * 1000, 1000, seq=1, sport=40009)
    psh_mid[1] = tcp_packet(False, psh_mid[1][72:], 1001, 0x18, OPTIONS[1], 101, sport=40009)
    stream = mixed + gap + syn + other_ack + psh_mid
    for fn in (o.coalesce, o.coalesce_slow):
        assert expand(fn(stream)) == stream


def test_non_tcp_and_short_packets_pass_through() -> None:
    stream = [udp_packet(False, b"x" * 100), udp_packet(True, b"y"), b"\x45" + bytes(30), b"", b"\x60"]
    writes = o.coalesce(stream)
    assert writes == [o.ZERO_HDR + p for p in stream]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 1400), st.sampled_from([0x10, 0x18, 0x11, 0x12, 0x50])),
        max_size=60,
    ),
    st.booleans(),
)
def test_coalesce_property(items: list[tuple[int, int, int]], v6: bool) -> None:
    """Random mixes of 3 flows with in-order and out-of-order segments of random sizes and flags:
    the fast path equals the per-packet path and the receiver always gets exactly the input."""
    seqs = [1000, 2000, 3000]
    idents = [1, 1, 1]
    stream = []
    for flow, size, flags in items:
        payload = bytes([flow]) * size
        stream.append(
            tcp_packet(v6, payload, seqs[flow], flags, OPTIONS[1], idents[flow], sport=40000 + flow)
        )
        if size % 7:  # most segments follow on; some leave a gap
            seqs[flow] += size
        idents[flow] += 1
    fast = o.coalesce(stream)
    assert fast == o.coalesce_slow(stream)
    assert expand(fast) == stream


def as_rows(packets: list[bytes], extra: int = 0) -> PacketRows:
    """Packets as the core hands over one decrypted GRO train: rows in one buffer."""
    stride = 1 + max(map(len, packets)) + extra
    buf = bytearray(os.urandom(stride * len(packets)))
    for i, p in enumerate(packets):
        buf[i * stride + 1 : i * stride + 1 + len(p)] = p
    return PacketRows(memoryview(buf), stride, [len(p) for p in packets])


@pytest.mark.parametrize("impl", ["c", "python"])
@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 70),
    st.sampled_from([1300, 1375, 1, 99]),
    st.booleans(),
    st.sampled_from(["psh", "short", "both", "none", "gap", "ack", "syn", "gaptail"]),
    st.integers(0, 69),
)
def test_coalesce_rows_equal_per_packet_path(
    impl: str, n: int, mss: int, v6: bool, twist: str, where: int
) -> None:
    """One decrypted GRO train as rows (the T1 receive path), merged by the coalesce_rows kernel
    (C and the numpy twin): the same writes as the per-packet coalescer, and the receiver gets
    exactly the input, whatever ends or breaks the run."""
    if impl == "c" and c_kernels() is None:
        pytest.skip(NO_C)
    tail = 7 if twist in ("short", "both", "gaptail") else 0
    segs = flow_segments(
        v6, (n - (1 if tail else 0)) * mss + tail, mss, seq=0xFFFFF000, psh_last=twist in ("psh", "both")
    )
    at = where % len(segs)
    if twist == "gap":
        segs[at] = tcp_packet(v6, os.urandom(mss), 5, 0x10, OPTIONS[1])
    elif twist == "ack":
        segs[at] = tcp_packet(v6, os.urandom(mss), 0xFFFFF000 + at * mss, 0x10, OPTIONS[1], ack=1)
    elif twist == "syn":
        segs[at] = tcp_packet(v6, os.urandom(mss), 0xFFFFF000 + at * mss, 0x12, OPTIONS[1])
    elif twist == "gaptail":  # the short PSH segment that would end the run does not follow on
        segs[-1] = tcp_packet(v6, os.urandom(tail), 0xFFFFF000 + len(segs) * mss, 0x18, OPTIONS[1])
    lengths = [len(p) for p in segs]
    if lengths.count(lengths[0]) < len(lengths) - 1:
        return  # not the shape of a GRO train
    rows = as_rows(segs, extra=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastpath, "coalesce_rows", fastpath.implementation(impl).coalesce_rows)
        writes = o.coalesce([rows])
    assert writes == o.coalesce_slow(segs)
    assert expand(writes) == segs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_coalesce_random_bytes_never_crash(packets: list[bytes]) -> None:
    writes = o.coalesce(packets)
    assert len(writes) <= len(packets)


# --------------------------------------------------------------------------------------- TAP

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
VLANS = {0: b"", 1: b"\x81\x00\x00\x07", 2: b"\x88\xa8\x00\x05\x81\x00\x00\x07"}


def eth(v6: bool, vlans: int = 0, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    """An Ethernet header (with 0, 1 or 2 VLAN tags) for an IP packet."""
    return dst + src + VLANS[vlans] + (b"\x86\xdd" if v6 else b"\x08\x00")


def expand_frames(writes: list[bytes]) -> list[bytes]:
    """``expand`` for TAP writes: the Ethernet header sits between the virtio header and the IP
    packet, and the virtio offsets count it."""
    out = []
    for w in writes:
        hdr, frame = w[:10], w[10:]
        if hdr == o.ZERO_HDR:
            out.append(frame)
            continue
        vlans = 0
        while frame[12 + 4 * vlans : 14 + 4 * vlans] in (b"\x81\x00", b"\x88\xa8"):
            vlans += 1
        l2 = 14 + 4 * vlans
        flags, gso_type, hdr_len, gso_size, cstart, coff = o.VNET_HDR.unpack(hdr)
        ip_write = o.VNET_HDR.pack(flags, gso_type, hdr_len - l2, gso_size, cstart - l2, coff) + frame[l2:]
        out.extend(frame[:l2] + p for p in expand([ip_write]))
    return out


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlans", [0, 1, 2])
@pytest.mark.parametrize("kind", ["tcp", "tcp-odd", "tcp-no-kernels", "udp"])
def test_tso_frame_segments_equal_reference(
    v6: bool, vlans: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TSO/USO frame from a TAP device: every segment is the reference segment of the IP packet
    behind the same Ethernet header (VLAN tags included), from the rows of the tcp_rows kernel
    (even and odd segment sizes) and from the per-segment path."""
    rng = random.Random(vlans * 2 + v6)
    head = eth(v6, vlans)
    iphl = 40 if v6 else 20
    if kind == "tcp-no-kernels":
        monkeypatch.setattr(fastpath, "TCP_ROWS", False)
    if kind.startswith("tcp"):
        mss = 1375 if kind == "tcp-odd" else 1376
        full = tcp_packet(v6, rng.randbytes(mss * 30 + 99), flags=0x18, options=OPTIONS[1])
        hdr = vnet(o.GSO_TCPV6 if v6 else o.GSO_TCPV4, mss, len(head) + iphl + 32, len(head) + iphl, 16)
        want = ref_segment_tcp(full, mss)
        frame = head + as_tso(full)
    else:
        payload = rng.randbytes(1400 * 9 + 77)
        full = udp_packet(v6, payload)
        hdr = vnet(o.GSO_UDP_L4, 1400, len(head) + iphl + 8, len(head) + iphl, 6)
        want = o.segment(vnet(o.GSO_UDP_L4, 1400, iphl + 8, iphl, 6), full)
        frame = head + full
    got = o.segment_frame(hdr, frame)
    assert isinstance(got, PacketRows) == (kind in ("tcp", "tcp-odd") and fastpath.TCP_ROWS)
    if isinstance(got, PacketRows):
        got = got.packets()
    assert got == [head + p for p in want]
    assert all(l4_ok(p[len(head) :]) for p in got)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlans", [0, 1])
def test_partial_checksum_of_a_frame_is_completed(v6: bool, vlans: int) -> None:
    """NEEDS_CSUM offsets from a TAP device count the Ethernet header."""
    head = eth(v6, vlans)
    full = tcp_packet(v6, os.urandom(333), flags=0x18)
    iphl = 40 if v6 else 20
    partial = bytearray(full)
    src, dst = (full[8:24], full[24:40]) if v6 else (full[12:16], full[16:20])
    struct.pack_into(
        "!H", partial, iphl + 16, ref_sum(src + dst + struct.pack("!BBH", 0, 6, len(full) - iphl))
    )
    hdr = o.VNET_HDR.pack(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, len(head) + iphl, 16)
    assert o.segment_frame(hdr, head + bytes(partial)) == [head + full]


def test_frames_without_ip() -> None:
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    assert o.segment_frame(o.ZERO_HDR, arp) == [arp]
    with pytest.raises(o.OffloadError):
        o.segment_frame(vnet(o.GSO_TCPV4, 1000, 54, 34, 16), arp)
    assert o.l2_header_len(arp) == 0
    assert o.l2_header_len(MAC_B + MAC_A + b"\x08\x00") == 0  # nothing behind the header
    assert o.l2_header_len(MAC_B + MAC_A + VLANS[2] + b"\x81\x00\x00\x01\x08\x00" + bytes(20)) == 0


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_frames(kernels: ModuleType, v6: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames of two flows to two MAC addresses, a VLAN, an ARP frame and a frame without IP in
    between: runs behind one Ethernet header are coalesced, the receiver gets exactly the input,
    and the writes are the IP writes with the Ethernet header put in."""
    monkeypatch.setattr(fastpath, "coalesce_rows", kernels.coalesce_rows)
    flow1 = flow_segments(v6, 20 * 1300 + 5, 1300, seq=1)
    flow2 = flow_segments(v6, 10 * 1300, 1300, seq=77, sport=40001)
    head1 = eth(v6)
    head2 = eth(v6, 1, dst=bytes.fromhex("02000000000c"))
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    stream = [head1 + p for p in flow1[:7]] + [arp] + [head1 + p for p in flow1[7:]]
    stream += [head2 + p for p in flow2] + [b"\xff" * 12]
    writes = o.coalesce_frames(stream)
    assert expand_frames(writes) == stream
    assert sum(1 for w in writes if w[1]) == 3
    assert writes[0] == o._with_l2(o.coalesce(flow1[:7])[0], head1)
    assert writes[1] == o.ZERO_HDR + arp
    # a decrypted GRO train as rows: coalesced in place behind its one header, or frame by frame
    # when the headers differ; frames before and after keep their places
    same = [head1 + p for p in flow1]
    writes = o.coalesce_frames([arp, as_rows(same, extra=3), arp])
    assert writes[1:-1] == [o._with_l2(w, head1) for w in o.coalesce(flow1)]
    assert expand_frames(writes) == [arp, *same, arp]
    if o.HAVE_NUMPY:
        # in place means one merge for the run (in the kernel), not one check per frame
        calls: list[bytes] = []
        real = o._tcp_info
        monkeypatch.setattr(o, "_tcp_info", lambda p: calls.append(p) or real(p))
        # all rows full: the shifted buffer ends right after the last packet
        merged = o.coalesce_frames([as_rows(same[:-1])])
        monkeypatch.setattr(o, "_tcp_info", real)
        assert not calls
        assert merged == [o._with_l2(o.coalesce(flow1[:-1])[0], head1)]
    mixed = [head1 + p for p in flow1[:4]] + [head2 + p for p in flow1[4:]]
    assert expand_frames(o.coalesce_frames([as_rows(mixed)])) == mixed
    vlan2 = [eth(v6, 2) + p for p in flow1]
    assert expand_frames(o.coalesce_frames([as_rows(vlan2)])) == vlan2
    assert sum(1 for w in o.coalesce_frames([as_rows(vlan2)]) if w[1]) >= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_coalesce_frames_random_bytes_never_crash(frames: list[bytes]) -> None:
    writes = o.coalesce_frames(frames)
    assert len(writes) <= len(frames)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=10, max_size=10), st.binary(max_size=300))
def test_segment_frame_bad_input_is_a_clean_drop(hdr: bytes, frame: bytes) -> None:
    with contextlib.suppress(o.OffloadError):
        o.segment_frame(hdr, frame)
