"""Session message types and the NODE_INFO encoding (spec sections 4.3 and 9.1).

NODE_INFO is a sequence of ``[u8 part type][u16 BE length][bytes]`` parts ended by a single ``0x00``.
The encoder writes the parts in the order the 2.4.0 binary does (4, 1, 2, 3, 5, END) so that our
messages are byte-identical to the original's; the decoder accepts any order and skips unknown parts,
like the original (spec 9.1 "lenient decoding").

Socket addresses in address lists keep their family as published: a 16-byte entry (IPv6, including
IPv4-mapped) decodes to an IPv6 text tuple (mapped ones as ``::ffff:a.b.c.d``), a 4-byte entry to a
plain IPv4 tuple. The core maps them itself where it needs table keys.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import DecodeError
from .types import NODE_ID_BYTES, Range, SocketAddr, host_text, sockaddr_entry

MSG_DATA = 0x00
MSG_NODE_INFO = 0x01
MSG_KEEPALIVE = 0x02
MSG_ROTATION = 0x10
MSG_CLOSE = 0xFF

PART_END = 0
PART_PEERS = 1
PART_CLAIMS = 2
PART_PEER_TIMEOUT = 3
PART_NODEID = 4
PART_ADDRS = 5

#: At most this many addresses of each family fit into one address list (3-bit counters).
MAX_ADDRS_PER_FAMILY = 7

_FLAG_NODE_ID = 0x80


@dataclass(slots=True)
class PeerInfo:
    """One PEERS entry: a peer's node id (optional on the wire) and its published addresses."""

    node_id: bytes | None
    addrs: list[SocketAddr] = field(default_factory=list)


@dataclass(slots=True)
class NodeInfo:
    """A decoded NODE_INFO message (the handshake payload and the body of session type 1)."""

    node_id: bytes
    peers: list[PeerInfo] = field(default_factory=list)
    claims: list[Range] = field(default_factory=list)
    peer_timeout: int | None = None
    addrs: list[SocketAddr] = field(default_factory=list)

    def encode(self) -> bytes:
        """Encode in the original's part order 4, 1, 2, 3, 5 and END.

        ``peer_timeout`` is truncated to u16 like the original; ``None`` omits the part (2.4.0 always
        writes it, so the node should always set it). Raises :class:`DecodeError` for a node id that is
        not 16 bytes or an address that is not an IP literal.
        """
        if len(self.node_id) != NODE_ID_BYTES:
            raise DecodeError(f"node id must be {NODE_ID_BYTES} bytes, got {len(self.node_id)}")
        out = bytearray()
        _part(out, PART_NODEID, self.node_id)
        peers = bytearray()
        for peer in self.peers:
            addr_list = _encode_addr_list(peer.addrs)
            if peer.node_id is not None:
                if len(peer.node_id) != NODE_ID_BYTES:
                    raise DecodeError("peer node id must be 16 bytes")
                peers.append(addr_list[0] | _FLAG_NODE_ID)
                peers += peer.node_id
                peers += addr_list[1:]
            else:
                peers += addr_list
        _part(out, PART_PEERS, peers)
        _part(out, PART_CLAIMS, b"".join(claim.encode() for claim in self.claims))
        if self.peer_timeout is not None:
            _part(out, PART_PEER_TIMEOUT, (self.peer_timeout & 0xFFFF).to_bytes(2, "big"))
        _part(out, PART_ADDRS, _encode_addr_list(self.addrs))
        out.append(PART_END)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> NodeInfo:
        """Decode leniently (any part order, unknown parts skipped); :class:`DecodeError` on bad input.

        A part type that appears twice: the last one wins. Bytes after END are ignored (the original
        reads from a buffer and stops at END).
        """
        data = bytes(data)
        node_id: bytes | None = None
        peers: list[PeerInfo] = []
        claims: list[Range] = []
        peer_timeout: int | None = None
        addrs: list[SocketAddr] = []
        pos = 0
        end = len(data)
        while True:
            if pos >= end:
                raise DecodeError("Input data too short")
            part = data[pos]
            if part == PART_END:
                break
            if pos + 3 > end:
                raise DecodeError("Input data too short")
            length = int.from_bytes(data[pos + 1 : pos + 3], "big")
            start = pos + 3
            pos = start + length
            if pos > end:
                raise DecodeError("Input data too short")
            body = data[start:pos]
            if part == PART_NODEID:
                if length < NODE_ID_BYTES:
                    raise DecodeError("Input data too short")
                node_id = body[:NODE_ID_BYTES]
            elif part == PART_PEERS:
                peers = _decode_peers(body)
            elif part == PART_CLAIMS:
                claims = []
                cpos = 0
                while cpos < length:
                    claim, cpos = Range.decode(body, cpos)
                    claims.append(claim)
            elif part == PART_PEER_TIMEOUT:
                if length < 2:
                    raise DecodeError("Input data too short")
                peer_timeout = int.from_bytes(body[:2], "big")
            elif part == PART_ADDRS:
                if length < 1:
                    raise DecodeError("Input data too short")
                addrs, _ = _decode_addr_list(body, 0, body[0])
            # any other part type is skipped by its length (forward compatibility, spec 9.1)
        if node_id is None:
            raise DecodeError("Payload without node_id")
        return cls(node_id, peers, claims, peer_timeout, addrs)


def _part(out: bytearray, part: int, body: bytes | bytearray) -> None:
    if len(body) > 0xFFFF:
        raise DecodeError("NODE_INFO part too long")
    out.append(part)
    out += len(body).to_bytes(2, "big")
    out += body


def _encode_addr_list(addrs: list[SocketAddr]) -> bytearray:
    """Flags byte (counts only) + IPv6 entries + IPv4 entries; first 7 of each family kept."""
    v6: list[bytes] = []
    v4: list[bytes] = []
    for addr in addrs:
        version, entry = sockaddr_entry(addr)
        if version == 6:
            if len(v6) < MAX_ADDRS_PER_FAMILY:
                v6.append(entry)
        elif len(v4) < MAX_ADDRS_PER_FAMILY:
            v4.append(entry)
    out = bytearray(((len(v6) << 3) | len(v4),))
    for entry in v6:
        out += entry
    for entry in v4:
        out += entry
    return out


def _decode_addr_list(buf: bytes, pos: int, flags: int) -> tuple[list[SocketAddr], int]:
    """Read the entries announced by ``flags`` starting after the flags byte at ``pos``."""
    n6 = (flags >> 3) & 0x07
    n4 = flags & 0x07
    pos += 1
    end = pos + n6 * 18 + n4 * 6
    if end > len(buf):
        raise DecodeError("Input data too short")
    addrs: list[SocketAddr] = []
    for _ in range(n6):
        ip6 = ipaddress.IPv6Address(buf[pos : pos + 16])
        addrs.append((host_text(ip6), int.from_bytes(buf[pos + 16 : pos + 18], "big")))
        pos += 18
    for _ in range(n4):
        ip4 = ipaddress.IPv4Address(buf[pos : pos + 4])
        addrs.append((str(ip4), int.from_bytes(buf[pos + 4 : pos + 6], "big")))
        pos += 6
    return addrs, pos


def _decode_peers(body: bytes) -> list[PeerInfo]:
    peers: list[PeerInfo] = []
    pos = 0
    while pos < len(body):
        flags = body[pos]
        node_id: bytes | None = None
        if flags & _FLAG_NODE_ID:
            if pos + 1 + NODE_ID_BYTES > len(body):
                raise DecodeError("Input data too short")
            node_id = body[pos + 1 : pos + 1 + NODE_ID_BYTES]
            # the node id sits between the flags and the entries; shift so the list reader sees
            # the entries right after a (virtual) flags byte
            addrs, pos = _decode_addr_list(body, pos + NODE_ID_BYTES, flags)
        else:
            addrs, pos = _decode_addr_list(body, pos, flags)
        peers.append(PeerInfo(node_id, addrs))
    return peers
