"""Super-packets between two nodes of ours (issue 9, "T2"): capability and wire format.

**Capability.** A node that can take super-packets adds one extra part to every NODE_INFO it sends
(handshake payload and session message type 1)::

    [u8 part type 0x56 'V'][u16 BE length 1][u8 feature bits]     before the END byte
    bit 0: TCP super-packets (virtio GSO types TCPV4/TCPV6)   bit 1: UDP super-packets (UDP_L4)

The original VpnCloud skips unknown NODE_INFO parts by their length (spec 9.1), so it never learns of
the capability and only ever receives ordinary traffic from us (T1). A node of ours with the
capability switched off sends no such part, so its NODE_INFO stays byte-identical to the original's.

**Messages.** Only to a peer that announced the capability, a super-packet (a 10-byte virtio-net
header plus a packet of up to 64 KB, exactly as the TUN device hands it over) is sent as ONE session
message of type ``MSG_SUPER`` (0x53), encrypted like any message (same keys, nonces and replay
window), and the resulting frame is cut into datagram-sized slices::

    [u8 0x56][u32 BE message id][u8 slice index][u8 slice count][frame bytes]

All slices but the last have the same size, so they leave in one UDP GSO send. The receiver
reassembles per peer (at most :data:`MAX_PENDING` messages in flight, oldest dropped first), then
decrypts the whole frame once. Slice headers are not authenticated on their own, but the frame is:
forged or mixed-up slices make the AEAD check fail and the message is dropped (one lost or forged
slice costs the whole super-packet; TCP retransmits it). The first byte 0x56 can never start an
ordinary datagram of an encrypted session (slot ids are 0..3, init is 0xFF).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

from . import lazy_numpy
from .rows import Train

# one strided copy instead of a memoryview per slice (about 45 per super-packet); numpy is
# imported at the first super-packet big enough to use it
_np: Any = lazy_numpy()

#: Below this many slices the per-call cost of numpy is more than the loop it saves.
NP_MIN_SLICES = 4
_INDEXES: Any = None  # numpy.arange(256) as uint8, made at the first use

PART_FEATURES = 0x56
FEATURE_TCP = 0x01
FEATURE_UDP = 0x02
MSG_SUPER = 0x53
SLICE_MARK = 0x56
SLICE_MARK_BYTE = bytes((SLICE_MARK,))
SLICE_HEADER = struct.Struct("!BLBB")
SLICE_HEADER_LEN = SLICE_HEADER.size  # 7
_unpack = SLICE_HEADER.unpack_from
MAX_SLICES = 255
#: Messages in reassembly per peer.
MAX_PENDING = 4

VNET_HDR_LEN = 10
_VNET = struct.Struct("<BBHHHH")
_GSO_NONE = 0
_GSO_TCPV4 = 1
_GSO_TCPV6 = 4
_GSO_UDP_L4 = 5


class SuperPacketError(ValueError):
    """Bytes that are no valid slice, super-packet or NODE_INFO for it (from the network: the
    caller drops them as malformed). Its own type: this package imports nothing from the core."""


class SuperPacket(bytes):
    """A device write that already starts with its virtio-net header (from ``packets_to_device``)."""

    __slots__ = ()


class SuperPacketView:
    """A received super-packet (virtio header + packet) as a view of its decrypted frame, for the
    offloading device writer (``take_device_output``). Copied into a 64 KB ``bytes`` it cost the
    receiving daemon about a tenth of its samples; ``packets_to_device`` makes it a
    :class:`SuperPacket` for everyone else."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data


# --- capability ------------------------------------------------------------------------------


def add_features(node_info: bytes, features: int) -> bytes:
    """An encoded NODE_INFO with the features part inserted before END (unchanged for 0)."""
    if not features:
        return node_info
    if not node_info or node_info[-1] != 0:
        raise SuperPacketError("NODE_INFO does not end with END")
    return node_info[:-1] + bytes((PART_FEATURES, 0, 1, features & 0xFF, 0))


def decode_features(node_info: bytes) -> int:
    """The feature bits announced in an encoded NODE_INFO (0 if none, also for malformed input)."""
    pos = 0
    end = len(node_info)
    features = 0
    while pos < end:
        part = node_info[pos]
        if part == 0 or pos + 3 > end:
            break
        length = (node_info[pos + 1] << 8) | node_info[pos + 2]
        start = pos + 3
        pos = start + length
        if pos > end:
            return 0
        if part == PART_FEATURES and length >= 1:
            features = node_info[start]
    return features


# --- slicing ---------------------------------------------------------------------------------


def split_frame(frame: bytes, msg_id: int, max_datagram: int) -> list[bytes]:
    """Datagrams of at most ``max_datagram`` bytes carrying ``frame``; raises ValueError if the
    frame needs more than 255 slices."""
    return split_frame_train(frame, msg_id, max_datagram).datagrams()


def split_frame_train(frame: bytes | bytearray | memoryview, msg_id: int, max_datagram: int) -> Train:
    """The slices of ``frame`` back to back as one :class:`Train` (see :func:`split_frame`)."""
    size = max_datagram - SLICE_HEADER_LEN
    if size <= 0:
        raise ValueError("datagram size too small for super-packet slices")
    count = max(1, -(-len(frame) // size))
    if count > MAX_SLICES:
        raise ValueError("super-packet too large for its slice size")
    msg_id &= 0xFFFFFFFF
    header = SLICE_HEADER.pack(SLICE_MARK, msg_id, 0, count)
    if _np is not None and count >= NP_MIN_SLICES:
        return Train(_split_np(frame, header, count, size), max_datagram, count)
    # the headers differ only in the index byte: join with header 0 as the separator (one copy of
    # the frame, no loop in Python), then write all index bytes with one strided assignment
    src = memoryview(frame)
    out = bytearray(header).join(
        [b"", *[src[pos : pos + size] for pos in range(0, max(len(frame), 1), size)]]
    )
    out[5::max_datagram] = bytes(range(count))
    return Train(out, max_datagram, count)


def _split_np(frame: bytes | bytearray | memoryview, header: bytes, count: int, size: int) -> memoryview:
    """:func:`split_frame_train`'s buffer: the frame copied once into rows of ``7 + size``."""
    global _INDEXES
    if _INDEXES is None:
        _INDEXES = _np.arange(256, dtype=_np.uint8)
    seg = SLICE_HEADER_LEN + size
    full = len(frame) // size
    # np.empty: a bytearray would first be zero-filled, which costs as much as the copy itself
    dst = _np.empty(len(frame) + count * SLICE_HEADER_LEN, _np.uint8)
    rows = dst[: full * seg].reshape(full, seg)
    rows[:, SLICE_HEADER_LEN:] = _np.frombuffer(frame, _np.uint8, full * size).reshape(full, size)
    rows[:, :SLICE_HEADER_LEN] = _np.frombuffer(header, _np.uint8)
    rows[:, 5] = _INDEXES[:full]
    out = memoryview(dst)
    if full < count:  # the shorter last slice
        tail = full * seg
        out[tail : tail + SLICE_HEADER_LEN] = header
        out[tail + 5] = full
        out[tail + SLICE_HEADER_LEN :] = memoryview(frame)[full * size :]
    return out


def whole_message(data: bytes, seg: int) -> bytes | memoryview | None:
    """The frame of a GRO train that holds exactly all slices of one message, in order (the
    common case: one super-packet, one GSO send, one GRO read); None for anything else."""
    n = (len(data) + seg - 1) // seg
    if n < 2 or len(data) <= (n - 1) * seg + SLICE_HEADER_LEN or seg <= SLICE_HEADER_LEN:
        return None
    mark, _msg_id, index, count = _unpack(data)
    if mark != SLICE_MARK or index != 0 or count != n:
        return None
    # column k of all slice headers is data[k::seg]: every header checked without a Python loop
    for k in (1, 2, 3, 4):
        if data[k::seg] != data[k : k + 1] * n:
            return None
    if (
        data[0::seg] != SLICE_MARK_BYTE * n
        or data[6::seg] != data[6:7] * n
        or data[5::seg] != bytes(range(n))
    ):
        return None
    size = seg - SLICE_HEADER_LEN
    if _np is not None and n >= NP_MIN_SLICES:
        full = n - 1
        dst = _np.empty(len(data) - n * SLICE_HEADER_LEN, _np.uint8)
        rows = _np.frombuffer(data, _np.uint8, full * seg).reshape(full, seg)
        dst[: full * size].reshape(full, size)[:] = rows[:, SLICE_HEADER_LEN:]
        out = memoryview(dst)
        out[full * size :] = memoryview(data)[full * seg + SLICE_HEADER_LEN :]
        return out
    view = memoryview(data)
    return b"".join([view[pos : pos + size] for pos in range(SLICE_HEADER_LEN, len(data), seg)])


class _Message:
    __slots__ = ("missing", "parts")

    def __init__(self, count: int) -> None:
        self.parts: list[bytes | None] = [None] * count
        self.missing = count


class Reassembler:
    """Slices of one peer -> whole frames. Bounded: :data:`MAX_PENDING` messages at a time."""

    __slots__ = ("dropped", "pending")

    def __init__(self) -> None:
        self.pending: OrderedDict[int, _Message] = OrderedDict()
        self.dropped = 0  # messages given up (evicted incomplete, or inconsistent)

    def add(self, datagram: bytes) -> bytes | None:
        """One slice datagram; returns the frame once complete. Raises SuperPacketError if malformed."""
        if len(datagram) <= SLICE_HEADER_LEN:
            raise SuperPacketError("super-packet slice too short")
        mark, msg_id, index, count = _unpack(datagram)
        if mark != SLICE_MARK or index >= count:
            raise SuperPacketError("invalid super-packet slice header")
        if count == 1:
            return datagram[SLICE_HEADER_LEN:]
        msg = self.pending.get(msg_id)
        if msg is None:
            while len(self.pending) >= MAX_PENDING:
                self.pending.popitem(last=False)
                self.dropped += 1
            msg = self.pending[msg_id] = _Message(count)
        elif len(msg.parts) != count:
            # the count does not match the earlier slices: forged or corrupt, give the message up
            del self.pending[msg_id]
            self.dropped += 1
            raise SuperPacketError("super-packet slice count mismatch")
        parts = msg.parts
        if parts[index] is not None:
            return None  # duplicate
        parts[index] = datagram
        msg.missing -= 1
        if msg.missing:
            return None
        del self.pending[msg_id]
        return b"".join([memoryview(p)[SLICE_HEADER_LEN:] for p in parts if p is not None])


# --- checks ----------------------------------------------------------------------------------


def check_super_payload(payload: bytes | memoryview, features: int) -> None:
    """Validate a received super-packet (virtio header + IP packet) before it goes to the device.

    Raises SuperPacketError for anything the local device was not set up for or that is inconsistent.
    """
    if len(payload) < VNET_HDR_LEN + 20:
        raise SuperPacketError("super-packet too short")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(payload)
    plen = len(payload) - VNET_HDR_LEN
    if flags & ~0x03:
        raise SuperPacketError("unknown virtio header flags")
    if flags & 0x01 and (csum_offset not in (6, 16) or csum_start + csum_offset + 2 > plen):
        raise SuperPacketError("checksum offsets out of range")
    kind = gso_type & 0x7F
    version = payload[VNET_HDR_LEN] >> 4
    if version == 4:
        proto = payload[VNET_HDR_LEN + 9]
    elif version == 6:
        if plen < 40:
            raise SuperPacketError("super-packet too short")
        proto = payload[VNET_HDR_LEN + 6]
    else:
        raise SuperPacketError("super-packet is not IP")
    if kind == _GSO_NONE:
        return
    if gso_size == 0 or hdr_len > plen or not flags & 0x01:
        raise SuperPacketError("inconsistent GSO header")
    if kind in (_GSO_TCPV4, _GSO_TCPV6):
        if not features & FEATURE_TCP or proto != 6 or version != (4 if kind == _GSO_TCPV4 else 6):
            raise SuperPacketError("TCP super-packet not acceptable")
    elif kind == _GSO_UDP_L4:
        if not features & FEATURE_UDP or proto != 17:
            raise SuperPacketError("UDP super-packet not acceptable")
    else:
        raise SuperPacketError("unsupported GSO type")
