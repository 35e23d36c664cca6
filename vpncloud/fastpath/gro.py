"""The GRO rules shared by the coalescer (offload.py) and the Python twin of the merge kernel:
which TCP segments may be merged, and the device write that merges them.

No numpy at import and no import of the package's interface (``vpncloud.fastpath``), so that the
Python twin (``_python.py``) can use it while the package picks its kernels.
"""

from __future__ import annotations

import struct
from typing import Any

from vpncloud.lazy import lazy

#: numpy for the vectorised checks, imported at their first use; None when not installed
_np: Any = lazy("numpy")

#: The virtio-net header of an offloading TUN/TAP device (offload.py's docstring has its layout).
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = 10
ZERO_HDR = bytes(VNET_HDR_LEN)

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

PROTO_TCP = 6
PROTO_UDP = 17

#: Largest packet a coalesced write may have (IPv4 total length is 16 bits).
MAX_COALESCED = 65535
#: Largest number of segments merged into one write (the kernel's GRO limit is similar).
MAX_SEGMENTS = 64

#: Equal-sized packets needed before the vectorised check pays off (the C kernel keeps the same
#: threshold so that both twins merge the same rows).
FAST_MIN = 4

_H = struct.Struct("!H")
_L = struct.Struct("!L")


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones'-complement sum of ``data`` as 16-bit big-endian words (odd length: zero padded),
    reduced mod 0xFFFF (0 stands for both zeros)."""
    n = len(data)
    if n & 1:
        return (int.from_bytes(data, "big") << 8) % 0xFFFF
    return int.from_bytes(data, "big") % 0xFFFF


def finish(total: int) -> int:
    """Checksum field value for a ones'-complement sum (any size, folded here)."""
    total %= 0xFFFF
    return 0xFFFF - total if total else 0


def fold(total: int) -> int:
    """Fold a sum into 16 bits without inverting (for partial / pseudo-header checksums)."""
    total %= 0xFFFF
    return total if total else 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the TCP/UDP pseudo header (IPv4 or IPv6 by the address length)."""
    return ones_sum(src) + ones_sum(dst) + proto + length


def ipv4_header_checksum(header: bytes | bytearray) -> int:
    """Checksum of an IPv4 header whose checksum field is zero."""
    return finish(ones_sum(header))


def tcp_info(packet: bytes) -> tuple[bytes, int, int, int, int, bool, int] | None:
    """(flow key, IP header len, full header len, seq, payload len, v6, tcp flags) or None if the
    packet cannot take part in coalescing."""
    n = len(packet)
    if n < 40:
        return None
    b0 = packet[0]
    if b0 == 0x45:
        if packet[9] != PROTO_TCP or _H.unpack_from(packet, 2)[0] != n:
            return None
        if _H.unpack_from(packet, 6)[0] & 0x3FFF:  # MF or offset: a fragment
            return None
        iphl = 20
        v6 = False
        # tos, frag field (DF), ttl, proto, addresses
        ipkey = packet[1:2] + packet[6:9] + packet[12:20]
    elif b0 >> 4 == 6:
        if n < 60 or packet[6] != PROTO_TCP or _H.unpack_from(packet, 4)[0] != n - 40:
            return None
        iphl = 40
        v6 = True
        ipkey = packet[0:4] + packet[7:40]
    else:
        return None
    doff = (packet[iphl + 12] >> 4) * 4
    hl = iphl + doff
    if doff < 20 or hl > n:
        return None
    flags = packet[iphl + 13]
    if flags & ~0x18:  # anything but ACK/PSH (SYN, FIN, RST, URG, ECE, CWR) is written alone
        return None
    if not flags & 0x10:
        return None
    plen = n - hl
    if plen == 0:
        return None
    # ports, ack, doff byte, window, urgent pointer, options
    key = b"".join(
        (
            ipkey,
            packet[iphl : iphl + 4],
            packet[iphl + 8 : iphl + 13],
            packet[iphl + 14 : iphl + 16],
            packet[iphl + 18 : hl],
        )
    )
    seq = _L.unpack_from(packet, iphl + 4)[0]
    return key, iphl, hl, seq, plen, v6, flags


def gso_write(
    first: bytes, iphl: int, hl: int, v6: bool, gso: int, last_flags: int, total: int, payloads: list[bytes]
) -> bytes:
    """One device write for merged segments: virtio GSO header + the first segment's headers
    (lengths for ``total`` bytes, PSH of the last segment, pseudo-header sum) + all payloads."""
    head = bytearray(first[:hl])
    head[iphl + 13] = last_flags
    tcp_len = total - iphl
    if v6:
        _H.pack_into(head, 4, tcp_len)
        src, dst = head[8:24], head[24:40]
        gso_type = GSO_TCPV6
    else:
        _H.pack_into(head, 2, total)
        _H.pack_into(head, 10, 0)
        _H.pack_into(head, 10, ipv4_header_checksum(head[:iphl]))
        src, dst = head[12:16], head[16:20]
        gso_type = GSO_TCPV4
    _H.pack_into(head, iphl + 16, fold(pseudo_sum(bytes(src), bytes(dst), PROTO_TCP, tcp_len)))
    vhdr = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, hl, gso, iphl, 16)
    return b"".join([vhdr, head, *payloads])


_COLUMNS: dict[tuple[int, int], Any] = {}


def invariant_columns(iphl: int, hl: int) -> Any:
    """Header byte positions that must be equal in all equal-sized segments of one run."""
    cols = _COLUMNS.get((iphl, hl))
    if cols is None:
        keep = _np.ones(hl, dtype=bool)
        if iphl == 20:
            keep[[4, 5, 10, 11]] = False  # IPv4 id and header checksum
        keep[iphl + 4 : iphl + 8] = False  # sequence number (flags stay: ACK only, like the first)
        keep[iphl + 16 : iphl + 18] = False  # checksum
        cols = _COLUMNS[(iphl, hl)] = _np.nonzero(keep)[0]
    return cols


def mergeable_prefix(rows: Any, iphl: int, hl: int, plen: int) -> int:
    """How many of ``rows`` (a numpy array, one equal-sized TCP segment per row, the first one's
    flow) are one run from the first: the same headers but for the invariant columns' exceptions,
    each sequence number ``plen`` after the previous one."""
    head = rows[:, invariant_columns(iphl, hl)]
    good = (head == head[0]).all(axis=1)
    seqs = _np.ascontiguousarray(rows[:, iphl + 4 : iphl + 8]).view(">u4")[:, 0].astype(_np.int64)
    good[1:] &= ((seqs[1:] - seqs[:-1]) & 0xFFFFFFFF) == plen
    bad = _np.flatnonzero(~good)
    return int(bad[0]) if len(bad) else len(rows)
