"""NODE_INFO encoding and lenient decoding (spec 9.1) and the message type numbers (4.3)."""

from __future__ import annotations

import pytest

from vpncloud.core import messages
from vpncloud.core.errors import DecodeError
from vpncloud.core.messages import NodeInfo, PeerInfo
from vpncloud.core.types import Range

NODE_ID = bytes(range(16))
OTHER_ID = bytes(range(100, 116))

# spec 9.1 worked example, written out part by part
WORKED_EXAMPLE = bytes.fromhex(
    "040010 000102030405060708090a0b0c0d0e0f"
    "010000"
    "020006 040a00000018"
    "030002 012c"
    "050013 08 00000000000000000000ffffc0a80105 0c8a"
    "00"
)


def part(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(2, "big") + body


def test_message_type_numbers() -> None:
    assert (messages.MSG_DATA, messages.MSG_NODE_INFO, messages.MSG_KEEPALIVE) == (0, 1, 2)
    assert (messages.MSG_ROTATION, messages.MSG_CLOSE) == (0x10, 0xFF)


def test_worked_example_is_byte_identical() -> None:
    info = NodeInfo(NODE_ID, [], [Range.parse("10.0.0.0/24")], 300, [("::ffff:192.168.1.5", 3210)])
    encoded = info.encode()
    assert len(encoded) == 59
    assert encoded == WORKED_EXAMPLE
    assert NodeInfo.decode(encoded) == info


def test_peer_entry_with_node_id_and_mixed_families() -> None:
    peer = PeerInfo(OTHER_ID, [("10.1.1.1", 1), ("fd00::1", 2), ("::ffff:10.2.2.2", 3), ("10.3.3.3", 4)])
    info = NodeInfo(NODE_ID, [peer], [], 300, [("10.9.9.9", 3210)])
    encoded = info.encode()
    peers_body = (
        bytes([0x80 | (2 << 3) | 2])
        + OTHER_ID
        + bytes.fromhex("fd000000000000000000000000000001") + (2).to_bytes(2, "big")
        + bytes.fromhex("00000000000000000000ffff0a020202") + (3).to_bytes(2, "big")
        + bytes([10, 1, 1, 1]) + (1).to_bytes(2, "big")
        + bytes([10, 3, 3, 3]) + (4).to_bytes(2, "big")
    )  # fmt: skip
    assert part(1, peers_body) in encoded
    # the ADDRS part holds a 4-byte entry for the plain IPv4 address (flags 0x01)
    assert encoded.endswith(part(5, bytes([0x01, 10, 9, 9, 9, 0x0C, 0x8A])) + b"\x00")
    decoded = NodeInfo.decode(encoded)
    # IPv6 first, then IPv4; mapped addresses stay mapped text, plain IPv4 stays plain
    assert decoded.peers == [
        PeerInfo(OTHER_ID, [("fd00::1", 2), ("::ffff:10.2.2.2", 3), ("10.1.1.1", 1), ("10.3.3.3", 4)])
    ]
    assert decoded.addrs == [("10.9.9.9", 3210)]


def test_peer_entry_without_node_id() -> None:
    info = NodeInfo(NODE_ID, [PeerInfo(None, [("10.0.0.1", 3210)])], [], 300, [])
    encoded = info.encode()
    assert part(1, bytes([0x01, 10, 0, 0, 1, 0x0C, 0x8A])) in encoded
    assert NodeInfo.decode(encoded).peers == [PeerInfo(None, [("10.0.0.1", 3210)])]


def test_at_most_seven_addresses_per_family() -> None:
    v4 = [(f"10.0.0.{i}", i) for i in range(1, 11)]
    v6 = [(f"fd00::{i}", i) for i in range(1, 11)]
    info = NodeInfo(NODE_ID, [PeerInfo(OTHER_ID, v6 + v4)], [], 300, v4 + v6)
    decoded = NodeInfo.decode(info.encode())
    assert decoded.addrs == v6[:7] + v4[:7]
    assert decoded.peers[0].addrs == v6[:7] + v4[:7]
    assert decoded.peers[0].node_id == OTHER_ID


def test_peer_timeout_truncated_to_u16_and_optional() -> None:
    assert NodeInfo.decode(NodeInfo(NODE_ID, peer_timeout=65536 + 7).encode()).peer_timeout == 7
    encoded = NodeInfo(NODE_ID, peer_timeout=None).encode()
    assert b"\x03\x00\x02" not in encoded
    assert NodeInfo.decode(encoded).peer_timeout is None


def test_claims_of_all_address_kinds_round_trip() -> None:
    claims = [
        Range.parse("10.99.0.0/16"),
        Range.parse("fd00:1::/64"),
        Range.parse("10.251.0.2/32"),
        Range(bytes.fromhex("0338782d16050102"), 64),
    ]
    decoded = NodeInfo.decode(NodeInfo(NODE_ID, claims=claims, peer_timeout=300).encode())
    assert decoded.claims == claims


def test_lenient_decoding_reordered_unknown_and_missing_parts() -> None:
    # order 5, 9 (unknown), 2, 4, no PEERS, no PEER_TIMEOUT; like the live check in spec 9.1
    data = (
        part(5, bytes([0x01, 10, 0, 0, 7, 0, 80]))
        + part(9, b"whatever")
        + part(2, Range.parse("10.7.0.0/16").encode())
        + part(4, NODE_ID)
        + b"\x00"
        + b"trailing bytes after END are ignored"
    )
    info = NodeInfo.decode(data)
    assert info.node_id == NODE_ID
    assert info.peers == []
    assert info.claims == [Range.parse("10.7.0.0/16")]
    assert info.peer_timeout is None
    assert info.addrs == [("10.0.0.7", 80)]


def test_peers_entry_with_flags_81() -> None:
    data = part(4, NODE_ID) + part(1, bytes([0x81]) + OTHER_ID + bytes([10, 250, 0, 2, 0x0C, 0x8A])) + b"\x00"
    assert NodeInfo.decode(data).peers == [PeerInfo(OTHER_ID, [("10.250.0.2", 3210)])]


def test_bit_6_of_flags_is_ignored() -> None:
    data = part(4, NODE_ID) + part(5, bytes([0x40 | 0x01, 10, 0, 0, 1, 0, 1])) + b"\x00"
    assert NodeInfo.decode(data).addrs == [("10.0.0.1", 1)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (part(4, NODE_ID), "too short"),  # no END
        (part(4, NODE_ID)[:-1], "too short"),
        (b"\x04\x00", "too short"),
        (part(4, NODE_ID[:15]) + b"\x00", "too short"),
        (part(2, Range.parse("10.0.0.0/8").encode()) + b"\x00", "node_id"),
        (part(4, NODE_ID) + part(2, b"\x04\x0a\x00") + b"\x00", "short"),  # truncated claim
        (part(4, NODE_ID) + part(2, b"\x11" + bytes(18)) + b"\x00", "long"),  # address length 17
        (part(4, NODE_ID) + part(1, b"\x88" + OTHER_ID) + b"\x00", "too short"),  # entry missing
        (part(4, NODE_ID) + part(1, b"\x80" + OTHER_ID[:8]) + b"\x00", "too short"),
        (part(4, NODE_ID) + part(5, b"") + b"\x00", "too short"),
        (part(4, NODE_ID) + part(3, b"\x01") + b"\x00", "too short"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        NodeInfo.decode(data)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(DecodeError):
        NodeInfo(NODE_ID[:4]).encode()
    with pytest.raises(DecodeError):
        NodeInfo(NODE_ID, addrs=[("example.com", 1)]).encode()
    with pytest.raises(DecodeError):
        NodeInfo(NODE_ID, addrs=[("10.0.0.1", 70000)]).encode()
    with pytest.raises(DecodeError):
        NodeInfo(NODE_ID, peers=[PeerInfo(b"short", [])]).encode()
