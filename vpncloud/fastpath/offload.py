"""Kernel offloads on the device side: virtio-net headers, TSO/USO segmentation, checksums, GRO.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the TUN device hands us (and accepts from us) packets of
up to 64 KB, each preceded by a 10-byte ``virtio_net_hdr``::

    u8 flags (NEEDS_CSUM 1, DATA_VALID 2)   u8 gso_type (NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5; |ECN 0x80)
    u16 hdr_len   u16 gso_size   u16 csum_start   u16 csum_offset          (little endian on x86)

The wire format stays VpnCloud's (one inner packet per datagram), so

* **TX** (:func:`segment`): a TSO super-packet is cut into real TCP segments exactly as the kernel
  would (IP length/id/checksum, TCP sequence numbers, FIN/PSH only on the last segment, CWR only on
  the first, full TCP checksums), a USO super-packet into UDP datagrams; a plain packet with a partial
  checksum (``NEEDS_CSUM``, very common with ``TUN_F_CSUM``) gets its checksum completed, because a
  peer that writes without a virtio header (the original) would hand the kernel a broken packet.
* **RX** (:class:`Coalescer`): consecutive in-order TCP segments of one flow are merged back into one
  super-packet and written with a GSO header (``NEEDS_CSUM`` + pseudo-header sum), so the receiving
  kernel handles 64 KB at once. Coalescing follows the kernel's GRO rules (same addresses, ports,
  ack, window, options, TOS/TTL, only ACK/PSH flags, equal segment sizes with a shorter last one).

A TAP device (switch mode) gets the same offloads: its reads and writes are Ethernet frames, and
:func:`segment_frame` / :func:`coalesce_frames` apply the IP functions behind the Ethernet header.

Payload checksums of all segments of a super-packet are computed with one numpy call when numpy is
installed (the ones'-complement sum of 16-bit words); without numpy the pure-Python path uses
``int.from_bytes(data) % 0xFFFF`` (2^16 = 1 mod 65535), which gives the same checksums, slower.

Bad input never raises out of this module's public functions except :class:`OffloadError`, which the
caller treats as "drop the packet".
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, cast

from vpncloud import fastpath

from .gro import (
    F_NEEDS_CSUM,
    FAST_MIN,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    MAX_COALESCED,
    MAX_SEGMENTS,
    PROTO_TCP,
    PROTO_UDP,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_HDR,
    finish,
    ipv4_header_checksum,
    mergeable_prefix,
    ones_sum,
    pseudo_sum,
)
from .gro import gso_write as _gso_write
from .gro import tcp_info as _tcp_info
from .rows import PacketRows
from .superpacket import SuperPacketView

#: What the node hands the device writer: packets (or TAP frames), the rows of a decrypted GRO
#: train, received super-packets.
DeviceItem = bytes | PacketRows | SuperPacketView
#: One device write: bytes, or a received super-packet's view of its decrypted frame (no copy).
DeviceWrite = bytes | memoryview

#: Optional speed-up, see the module docstring; imported at the first batch that uses it.
_np: Any = fastpath.lazy_numpy()

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_L = struct.Struct("!L")

HAVE_NUMPY = _np is not None


class OffloadError(Exception):
    """A packet that cannot be segmented or checked (malformed): drop it."""


# --------------------------------------------------------------------------------------- checksums


def _payload_sums(buf: bytes, start: int, mss: int, count: int) -> list[int]:
    """Ones'-complement sums of ``count`` consecutive ``mss``-byte chunks of ``buf`` from ``start``."""
    if count <= 0:
        return []
    if _np is not None and count > 1:
        # Sum little-endian words (native, fast) and convert: a byte swap is a factor of 256 mod 0xFFFF.
        if mss & 1:
            # odd chunks: copy each into an even-sized zero-padded row (the padding rule of RFC 1071)
            octets = _np.frombuffer(buf, dtype=_np.uint8, count=count * mss, offset=start).reshape(count, mss)
            rows = _np.zeros((count, mss + 1), dtype=_np.uint8)
            rows[:, :mss] = octets
            words = rows.view("<u2")
        else:
            words = _np.frombuffer(buf, dtype="<u2", count=count * mss // 2, offset=start).reshape(
                count, mss // 2
            )
        sums = words.sum(axis=1, dtype=_np.uint64 if mss > 0x10000 else _np.uint32)
        return [(s * 256) % 0xFFFF for s in sums.tolist()]
    return [ones_sum(buf[start + i * mss : start + (i + 1) * mss]) for i in range(count)]


# --------------------------------------------------------------------------------------- parsing


def header_lengths(packet: bytes) -> tuple[int, int, int]:
    """(IP version, IP header length, L4 protocol) of a packet without IPv6 extension headers."""
    if len(packet) < 20:
        raise OffloadError("packet too short")
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            raise OffloadError("bad IPv4 header length")
        return 4, ihl, packet[9]
    if version == 6:
        if len(packet) < 40:
            raise OffloadError("packet too short")
        return 6, 40, packet[6]
    raise OffloadError("not an IP packet")


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a partial checksum (``NEEDS_CSUM``): sum from ``csum_start`` to the end, store it."""
    pos = csum_start + csum_offset
    if csum_start >= len(packet) or pos + 2 > len(packet):
        raise OffloadError("checksum offsets out of range")
    value = finish(ones_sum(memoryview(packet)[csum_start:]))
    if value == 0 and csum_offset == 6:
        value = 0xFFFF  # UDP: 0 means "no checksum"
    out = bytearray(packet)
    _H.pack_into(out, pos, value)
    return bytes(out)


# --------------------------------------------------------------------------------------- TX


def segment(hdr: bytes | memoryview, packet: bytes) -> list[bytes]:
    """The packets to send for one read from an offloading TUN: ``hdr`` is the virtio header.

    Returns the packet itself (checksum completed if needed) or its segments. Raises
    :class:`OffloadError` for malformed input.
    """
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(hdr)
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            return [complete_checksum(packet, csum_start, csum_offset)]
        return [packet]
    if gso_size == 0:
        raise OffloadError("GSO packet without segment size")
    if kind in (GSO_TCPV4, GSO_TCPV6):
        return segment_tcp(packet, gso_size, kind == GSO_TCPV6)
    if kind in (GSO_UDP_L4, GSO_UDP):
        return segment_udp(packet, gso_size)
    raise OffloadError(f"unsupported GSO type {gso_type}")


def _tcp_layout(packet: bytes, expect_v6: bool | None) -> tuple[int, int, int, int, bytes, bytes, int]:
    """Checked TCP super-packet layout: (version, IP header length, TCP header length, both,
    source address, destination address, IPv4 id)."""
    version, iphl, proto = header_lengths(packet)
    if proto != PROTO_TCP or (expect_v6 is not None and expect_v6 != (version == 6)):
        raise OffloadError("TSO packet is not TCP of the announced family")
    if len(packet) < iphl + 20:
        raise OffloadError("truncated TCP header")
    doff = (packet[iphl + 12] >> 4) * 4
    hl = iphl + doff
    if doff < 20 or hl > len(packet):
        raise OffloadError("bad TCP header length")
    if version == 4:
        if _H.unpack_from(packet, 6)[0] & 0x3FFF:
            raise OffloadError("fragmented TSO packet")
        return version, iphl, doff, hl, packet[12:16], packet[16:20], _H.unpack_from(packet, 4)[0]
    return version, iphl, doff, hl, packet[8:24], packet[24:40], 0


def segment_any(hdr: bytes | memoryview, packet: bytes, prefix: bytes = b"") -> list[bytes] | PacketRows:
    """:func:`segment`, but TSO packets come as :class:`PacketRows` when numpy is there (the
    core encrypts those straight into one datagram train). ``prefix`` (a TAP frame's Ethernet
    header) goes in front of every segment."""
    kind = hdr[1] & ~GSO_ECN
    if kind in (GSO_TCPV4, GSO_TCPV6) and fastpath.TCP_ROWS:
        gso_size = hdr[4] | hdr[5] << 8
        if gso_size:
            rows = segment_tcp_rows(packet, gso_size, kind == GSO_TCPV6, prefix)
            if rows is not None:
                return rows
    if prefix:
        return [prefix + seg for seg in segment(hdr, packet)]
    return segment(hdr, packet)


def _tcp_template(
    packet: bytes, version: int, iphl: int, hl: int, doff: int, src: bytes, dst: bytes
) -> tuple[bytearray, int, int]:
    """``_ip_template`` with the per-segment TCP fields zeroed too (seq, flags, checksum), and
    the TCP header sum plus the address part of the pseudo header."""
    tmpl, ip_base = _ip_template(packet, version, iphl, hl)
    _H.pack_into(tmpl, iphl + 16, 0)
    _L.pack_into(tmpl, iphl + 4, 0)
    tmpl[iphl + 13] = 0
    tcp_base = ones_sum(tmpl[iphl:]) + ones_sum(src) + ones_sum(dst) + PROTO_TCP + doff
    return tmpl, ip_base, tcp_base


def _ip_template(packet: bytes, version: int, iphl: int, hl: int) -> tuple[bytearray, int]:
    """The first ``hl`` bytes with the per-segment IP fields zeroed (IPv4 length, id, checksum;
    IPv6 payload length) and the IPv4 header sum of that template (0 for IPv6)."""
    tmpl = bytearray(packet[:hl])
    if version == 4:
        _H.pack_into(tmpl, 2, 0)
        _H.pack_into(tmpl, 4, 0)
        _H.pack_into(tmpl, 10, 0)
        return tmpl, ones_sum(tmpl[:iphl])
    _H.pack_into(tmpl, 4, 0)
    return tmpl, 0


def _put_ip_fields(h: bytearray, version: int, ip_len: int, ident: int, ip_base: int, v6_len: int) -> None:
    """The per-segment IP fields of a header copy: IPv4 total length, id and header checksum
    (``ip_base``: the sum of the template), or the IPv6 payload length."""
    if version == 4:
        _HH.pack_into(h, 2, ip_len, ident)
        _H.pack_into(h, 10, finish(ip_base + ip_len + ident))
    else:
        _H.pack_into(h, 4, v6_len)


def segment_tcp(packet: bytes, mss: int, expect_v6: bool | None = None) -> list[bytes]:
    """Cut a TCP super-packet into segments of ``mss`` payload bytes with full checksums."""
    version, iphl, doff, hl, src, dst, ip_id = _tcp_layout(packet, expect_v6)
    total = len(packet) - hl
    if total <= mss:
        # nothing to cut: just a full checksum
        out = bytearray(packet)
        _H.pack_into(out, iphl + 16, 0)
        if version == 4:
            _H.pack_into(out, 2, len(packet))
            _H.pack_into(out, 10, 0)
            _H.pack_into(out, 10, ipv4_header_checksum(out[:iphl]))
        else:
            _H.pack_into(out, 4, len(packet) - 40)
        tcp_sum = pseudo_sum(src, dst, PROTO_TCP, len(packet) - iphl) + ones_sum(out[iphl:])
        _H.pack_into(out, iphl + 16, finish(tcp_sum))
        return [bytes(out)]
    count = (total + mss - 1) // mss
    full = total // mss
    seq0 = _L.unpack_from(packet, iphl + 4)[0]
    flags0 = packet[iphl + 13]
    tmpl, ip_base, tcp_base = _tcp_template(packet, version, iphl, hl, doff, src, dst)
    sums = _payload_sums(packet, hl, mss, full)
    if full < count:
        sums.append(ones_sum(memoryview(packet)[hl + full * mss :]))
    first_flags = flags0 & ~0x09  # no FIN/PSH before the last segment
    mid_flags = first_flags & ~0x80  # CWR only on the first segment
    last_flags = flags0 & ~0x80
    segments: list[bytes] = []
    view = memoryview(packet)
    pos = hl
    for i in range(count):
        seglen = mss if i < full else total - full * mss
        fl = last_flags if i == count - 1 else (first_flags if i == 0 else mid_flags)
        if i == 0 and count == 1:
            fl = flags0
        seq = (seq0 + i * mss) & 0xFFFFFFFF
        h = bytearray(tmpl)
        _L.pack_into(h, iphl + 4, seq)
        h[iphl + 13] = fl
        _put_ip_fields(h, version, hl + seglen, (ip_id + i) & 0xFFFF, ip_base, doff + seglen)
        csum = tcp_base + seglen + (seq >> 16) + (seq & 0xFFFF) + fl + sums[i]
        _H.pack_into(h, iphl + 16, finish(csum))
        h += view[pos : pos + seglen]
        pos += seglen
        segments.append(h)  # type: ignore[arg-type]  # a bytearray is as good as bytes downstream
    return segments


def segment_tcp_rows(
    packet: bytes, mss: int, expect_v6: bool | None = None, prefix: bytes = b""
) -> PacketRows | None:
    """:func:`segment_tcp` with the segments laid out as :class:`PacketRows` (one free byte in
    front of each), written by the ``tcp_rows`` kernel (C, or numpy in the Python twin) instead
    of a loop per segment. ``prefix`` (the Ethernet header of a TAP frame) goes in front of every
    segment. Here are the protocol's rules (layout, flags of the first, middle and last segment),
    the kernel only writes what they say.

    The bytes of every segment are identical to ``segment_tcp``'s. None when no kernel can run
    (no C and no numpy) or when the packet needs no cutting (the caller then uses ``segment_tcp``)."""
    if not fastpath.TCP_ROWS:
        return None
    version, iphl, doff, hl, src, dst, ip_id = _tcp_layout(packet, expect_v6)
    total = len(packet) - hl
    if total <= mss:
        return None
    count = (total + mss - 1) // mss
    last = total - (count - 1) * mss
    flags0 = packet[iphl + 13]
    first_flags = flags0 & ~0x09  # no FIN/PSH before the last segment
    flags = (first_flags, first_flags & ~0x80, flags0 & ~0x80)  # CWR only on the first
    _tmpl, ip_base, tcp_base = _tcp_template(packet, version, iphl, hl, doff, src, dst)
    seq0 = _L.unpack_from(packet, iphl + 4)[0]
    rows = fastpath.tcp_rows(
        packet, prefix, iphl, hl, mss, version == 4, ip_id, ip_base % 0xFFFF, tcp_base % 0xFFFF, seq0, flags
    )
    lengths = [len(prefix) + hl + mss] * count
    lengths[-1] = len(prefix) + hl + last
    return PacketRows(rows, 1 + len(prefix) + hl + mss, lengths)


def segment_udp(packet: bytes, size: int) -> list[bytes]:
    """Cut a UDP GSO super-packet (USO) into datagrams of ``size`` payload bytes."""
    version, iphl, proto = header_lengths(packet)
    if proto != PROTO_UDP:
        raise OffloadError("USO packet is not UDP")
    hl = iphl + 8
    if hl > len(packet):
        raise OffloadError("truncated UDP header")
    if version == 4:
        if _H.unpack_from(packet, 6)[0] & 0x3FFF:
            raise OffloadError("fragmented USO packet")
        src, dst = packet[12:16], packet[16:20]
        ip_id = _H.unpack_from(packet, 4)[0]
    else:
        src, dst = packet[8:24], packet[24:40]
        ip_id = 0
    total = len(packet) - hl
    count = max((total + size - 1) // size, 1)
    full = total // size
    sums = _payload_sums(packet, hl, size, full)
    if full < count:
        sums.append(ones_sum(memoryview(packet)[hl + full * size :]))
    tmpl, ip_base = _ip_template(packet, version, iphl, hl)
    ports = ones_sum(tmpl[iphl : iphl + 4])
    addr_sum = ones_sum(src) + ones_sum(dst) + PROTO_UDP
    out: list[bytes] = []
    pos = hl
    for i in range(count):
        seglen = size if i < full else total - full * size
        h = bytearray(tmpl)
        udp_len = 8 + seglen
        _put_ip_fields(h, version, hl + seglen, (ip_id + i) & 0xFFFF, ip_base, udp_len)
        csum = finish(addr_sum + udp_len + ports + udp_len + sums[i]) or 0xFFFF
        _HH.pack_into(h, iphl + 4, udp_len, csum)
        h += packet[pos : pos + seglen]
        pos += seglen
        out.append(bytes(h))
    return out


# --------------------------------------------------------------------------------------- RX


class _Run:
    """Segments of one TCP flow waiting to be merged."""

    __slots__ = ("first", "gso", "hl", "iphl", "key", "next_seq", "parts", "size", "v6")

    def __init__(self, packet: bytes, key: bytes, iphl: int, hl: int, seq: int, plen: int, v6: bool) -> None:
        self.first = packet
        self.key = key
        self.iphl = iphl
        self.hl = hl
        self.v6 = v6
        self.gso = plen
        self.parts: list[bytes] = [packet]
        self.size = len(packet)
        self.next_seq = (seq + plen) & 0xFFFFFFFF


class Coalescer:
    """Userspace GRO: feed decrypted packets in order, get the device writes (virtio header + data).

    Only *adjacent* packets are merged (like the kernel's GRO within one NAPI poll), so the order of
    packets, also between flows, never changes. :meth:`flush` ends every run; call it when the
    socket is drained (EAGAIN), not after each read, because GRO trains are not message boundaries.
    """

    def __init__(self, out: list[DeviceWrite]) -> None:
        self.out = out
        self._run: _Run | None = None

    def add(self, packet: bytes | SuperPacketView) -> None:
        """One packet (IP, full checksums) in receive order; a :class:`SuperPacketView` (already
        with its virtio header) is passed through."""
        run = self._run
        if isinstance(packet, SuperPacketView):
            if run is not None:
                self._emit(run)
                self._run = None
            self.out.append(packet.data)
            return
        info = _tcp_info(packet)
        if info is None:
            if run is not None:
                self._emit(run)
                self._run = None
            self.out.append(ZERO_HDR + packet)
            return
        key, iphl, hl, seq, plen, v6, flags = info
        if run is not None:
            if (
                key == run.key
                and seq == run.next_seq
                and plen <= run.gso
                and run.size + plen <= MAX_COALESCED
                and len(run.parts) < MAX_SEGMENTS
            ):
                run.parts.append(packet)
                run.size += plen
                run.next_seq = (seq + plen) & 0xFFFFFFFF
                if plen < run.gso or flags & 0x08:
                    # a short segment or PSH ends the run (the kernel does the same)
                    self._emit(run)
                    self._run = None
                return
            self._emit(run)
            self._run = None
        if flags & 0x08:
            self.out.append(ZERO_HDR + packet)
            return
        self._run = _Run(packet, key, iphl, hl, seq, plen, v6)

    def flush(self) -> None:
        """Write out the pending run."""
        if self._run is not None:
            self._emit(self._run)
            self._run = None

    def _emit(self, run: _Run) -> None:
        parts = run.parts
        if len(parts) == 1:
            self.out.append(ZERO_HDR + run.first)
            return
        hl = run.hl
        self.out.append(
            _gso_write(
                run.first,
                run.iphl,
                hl,
                run.v6,
                run.gso,
                parts[-1][run.iphl + 13],
                run.size,
                [p[hl:] for p in parts],
            )
        )


def _fast_run(c: Coalescer, packets: Sequence[bytes], i: int, j: int) -> int:
    """Vectorised check of equal-sized packets ``packets[i:j]``: start a run with the longest
    mergeable prefix and return its length (0: not mergeable, use the per-packet path)."""
    assert _np is not None
    first = packets[i]
    info = _tcp_info(first)
    if info is None:
        return 0
    key, iphl, hl, seq, plen, v6, flags = info
    if flags & 0x08:
        return 0
    k = min(j - i, MAX_SEGMENTS, (MAX_COALESCED - hl) // plen)
    if k < 2:
        return 0
    size = len(first)
    rows = _np.frombuffer(b"".join(packets[i : i + k]), dtype=_np.uint8).reshape(k, size)
    m = mergeable_prefix(rows, iphl, hl, plen)
    if m < 2:
        return 0
    c.flush()
    run = _Run(first, key, iphl, hl, seq, plen, v6)
    run.parts = list(packets[i : i + m])
    run.size = hl + m * plen
    run.next_seq = (seq + m * plen) & 0xFFFFFFFF
    if m == MAX_SEGMENTS:
        c._emit(run)
    else:
        c._run = run
    return m


def _coalesce_rows(c: Coalescer, rows: PacketRows) -> None:
    """Packets decrypted from one GRO train (equal lengths, maybe a shorter last one): the
    ``coalesce_rows`` kernel merges the longest mergeable prefix straight from the row buffer,
    the rest goes packet by packet."""
    merged = fastpath.coalesce_rows(rows.buf, rows.stride, rows.lengths)
    if merged is None:
        for packet in rows.packets():
            c.add(packet)
        return
    write, taken = merged
    c.flush()
    c.out.append(write)
    for i in range(taken, len(rows.lengths)):
        c.add(rows.packet(i))


def coalesce(packets: Sequence[DeviceItem]) -> list[DeviceWrite]:
    """All device writes (virtio header + packet) for ``packets`` in order (one batch); items may
    be :class:`PacketRows` (the packets of one GRO train)."""
    out: list[DeviceWrite] = []
    c = Coalescer(out)
    n = len(packets)
    i = 0
    while i < n:
        p = packets[i]
        if isinstance(p, PacketRows):
            _coalesce_rows(c, p)
            i += 1
            continue
        if _np is not None and i + FAST_MIN <= n and isinstance(p, bytes):
            size = len(p)
            j = i + 1
            while j < n:
                q = packets[j]
                if not isinstance(q, bytes) or len(q) != size:
                    break
                j += 1
            if j - i >= FAST_MIN:
                # the loop above saw only bytes in packets[i:j]
                took = _fast_run(c, cast("Sequence[bytes]", packets), i, j)
                if took:
                    i += took
                    continue
        c.add(p)
        i += 1
    c.flush()
    return out


# --------------------------------------------------------------------------------------- TAP

#: Ethertypes of IPv4 and IPv6, and of the VLAN tags (802.1Q, 802.1ad) that may come before them.
_ETH_IP = (b"\x08\x00", b"\x86\xdd")
_ETH_VLAN = (b"\x81\x00", b"\x88\xa8")


def l2_header_len(frame: bytes | bytearray) -> int:
    """Length of the Ethernet header (with at most two VLAN tags) in front of an IP packet in
    ``frame``; 0 when the frame carries no IP packet (ARP, other protocols, truncated)."""
    pos = 12
    for _ in range(3):
        kind = frame[pos : pos + 2]
        if kind in _ETH_IP:
            return pos + 2 if len(frame) > pos + 2 else 0
        if kind not in _ETH_VLAN:
            return 0
        pos += 4
    return 0


def segment_frame(hdr: bytes | memoryview, frame: bytes) -> list[bytes] | PacketRows:
    """:func:`segment_any` for one read from an offloading TAP device: an Ethernet frame. Checksum
    offsets of the virtio header count from the start of the frame, so a plain frame is handled
    as is; a GSO frame is cut as an IP packet and every segment gets the frame's Ethernet header
    (TCP segments as :class:`PacketRows` when numpy is there)."""
    kind = hdr[1] & ~GSO_ECN
    if kind == GSO_NONE:
        return segment(hdr, frame)
    l2 = l2_header_len(frame)
    if not l2:
        raise OffloadError("GSO frame without an IP packet")
    return segment_any(hdr, frame[l2:], frame[:l2])


def _with_l2(write: DeviceWrite, head: bytes) -> bytes:
    """A device write for an IP packet (virtio header + packet) as one for an Ethernet frame: the
    header ``head`` goes in front of the packet, checksum start and header length move with it."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(write)
    if not flags and not gso_type:
        return b"".join((ZERO_HDR, head, memoryview(write)[VNET_HDR_LEN:]))
    l2 = len(head)
    if flags & F_NEEDS_CSUM:
        csum_start += l2
    if gso_type:
        hdr_len += l2
    vhdr = VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return b"".join((vhdr, head, memoryview(write)[VNET_HDR_LEN:]))


def _rows_behind_l2(rows: PacketRows) -> tuple[bytes, PacketRows] | None:
    """Frames in rows that all start with the same Ethernet header: that header and the IP
    packets as rows of the same buffer (each row's free byte is then the header's last byte,
    which the coalescer only reads). None when the headers differ or carry no IP."""
    buf = memoryview(rows.buf)
    stride = rows.stride
    lengths = rows.lengths
    head = bytes(buf[1 : 1 + min(lengths[0], 24)])
    l2 = l2_header_len(head)
    if not l2:
        return None
    head = head[:l2]
    # row 0 is longer than its header: l2_header_len wants bytes behind it
    for i in range(1, len(lengths)):
        if lengths[i] <= l2 or buf[i * stride + 1 : i * stride + 1 + l2] != head:
            return None
    return head, PacketRows(buf[l2:], stride, [n - l2 for n in lengths])


def coalesce_frames(frames: Sequence[DeviceItem]) -> list[DeviceWrite]:
    """:func:`coalesce` for a TAP device: Ethernet frames in, device writes out, in order. Adjacent
    frames with the same Ethernet header (addresses, VLAN tags, IP ethertype) are coalesced as IP
    packets; anything else is written alone, unchanged."""
    flat: list[bytes | SuperPacketView] = []
    out: list[DeviceWrite] = []
    for item in frames:
        if not isinstance(item, PacketRows):
            flat.append(item)
            continue
        shifted = _rows_behind_l2(item)
        if shifted is None:
            flat.extend(item.packets())
            continue
        # one decrypted GRO train behind one Ethernet header: coalesced in place, as on TUN
        out.extend(coalesce_frames(flat))
        flat = []
        head, rows = shifted
        out.extend(_with_l2(w, head) for w in coalesce([rows]))
    if not flat:
        return out
    n = len(flat)
    i = 0
    while i < n:
        frame = flat[i]
        if isinstance(frame, SuperPacketView):  # already a device write (T2 is TUN-only today)
            out.append(frame.data)
            i += 1
            continue
        l2 = l2_header_len(frame)
        if not l2:
            out.append(ZERO_HDR + frame)
            i += 1
            continue
        head = frame[:l2]
        j = i + 1
        # the same header bytes (ethertype included) mean the same header length
        while j < n:
            f = flat[j]
            if isinstance(f, SuperPacketView) or f[:l2] != head:
                break
            j += 1
        if j - i == 1:
            out.append(ZERO_HDR + frame)
        else:
            # the loop above saw only frames (bytes) in flat[i:j]
            same = cast("list[bytes]", flat[i:j])
            out.extend(_with_l2(w, head) for w in coalesce([f[l2:] for f in same]))
        i = j
    return out


def coalesce_slow(packets: list[bytes]) -> list[DeviceWrite]:
    """The per-packet coalescer only (reference for tests)."""
    out: list[DeviceWrite] = []
    c = Coalescer(out)
    for p in packets:
        c.add(p)
    c.flush()
    return out
