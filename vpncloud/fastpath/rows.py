"""Packets and datagrams laid out in one buffer (the T1 fast path, issue 9).

The segments of a 64 KB super-packet used to travel as 44 separate ``bytes`` objects: built one by
one, copied again to prepend the message type, once more by the AEAD and once more to prepend the
frame header. Laid out at a fixed stride in one buffer instead, each segment is written once by the
segmenter and read once by the AEAD, which encrypts straight into the datagram buffer that leaves as
one UDP GSO send. The bytes on the wire do not change: every datagram is still one ordinary
VpnCloud message carrying one inner packet.

Pure Python (no numpy): whoever builds :class:`PacketRows` may use numpy, the core never needs to.
"""

from __future__ import annotations

from collections.abc import Sequence


class PacketRows:
    """Packets at a fixed ``stride`` in ``buf``: row ``i`` starts at ``i * stride`` with one free
    byte (the core writes the message type there) followed by packet ``i`` of ``lengths[i]`` bytes;
    the rest of the row is unused."""

    __slots__ = ("buf", "lengths", "stride")

    def __init__(self, buf: bytearray | memoryview, stride: int, lengths: Sequence[int]) -> None:
        if not lengths:
            raise ValueError("no packets")
        if stride < 1 + max(lengths) or len(buf) < stride * (len(lengths) - 1) + 1 + lengths[-1]:
            raise ValueError("rows do not fit the buffer")
        self.buf = buf
        self.stride = stride
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def packet(self, i: int) -> bytes:
        start = i * self.stride + 1
        return bytes(memoryview(self.buf)[start : start + self.lengths[i]])

    def views(self) -> list[memoryview]:
        """The packets as views into the buffer (for a writer that needs no copies)."""
        view = memoryview(self.buf)
        stride = self.stride
        return [view[i * stride + 1 : i * stride + 1 + n] for i, n in enumerate(self.lengths)]

    def packets(self) -> list[bytes]:
        """The packets as separate ``bytes`` (the general path)."""
        return [bytes(v) for v in self.views()]

    def total(self) -> int:
        return sum(self.lengths)


class Train:
    """Datagrams to one address back to back in ``buf``: ``count`` of them, each ``seg`` bytes long
    except a possibly shorter last one (exactly what one UDP GSO send takes)."""

    __slots__ = ("buf", "count", "seg")

    def __init__(self, buf: bytes | bytearray | memoryview, seg: int, count: int) -> None:
        if seg <= 0 or count <= 0 or not (seg * (count - 1) < len(buf) <= seg * count):
            raise ValueError("train layout does not match its buffer")
        self.buf = buf
        self.seg = seg
        self.count = count

    def __len__(self) -> int:
        return len(self.buf)

    def datagrams(self) -> list[bytes]:
        """The datagrams as separate ``bytes`` (for senders without GSO and for the simulator)."""
        buf = self.buf
        seg = self.seg
        return [bytes(buf[pos : pos + seg]) for pos in range(0, len(buf), seg)]
