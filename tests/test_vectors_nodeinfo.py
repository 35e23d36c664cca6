"""Every unencrypted NODE_INFO captured from the 2.4.0 binary decodes and re-encodes byte-identically.

Sources (tests/fixtures/vectors/plain.json): the session NODE_INFO messages (``01`` + body) and the
PAYLOAD field (type 5) of the plain PONG/PENG handshake messages. The handshake parser belongs to
another module, so a minimal field walker lives here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vpncloud.core.messages import MSG_NODE_INFO, NodeInfo
from vpncloud.core.types import Range, format_sockaddr

FIXTURE = Path(__file__).parent / "fixtures" / "vectors" / "plain.json"
DOC = json.loads(FIXTURE.read_text())
NODE_IDS = {bytes.fromhex(v) for v in DOC["node_ids"].values()}


def handshake_payload(datagram: bytes) -> bytes:
    """PAYLOAD field (type 5) of a PONG/PENG: ff, salt(4), key hash(4), then [type][u16 len][body]..."""
    assert datagram[0] == 0xFF
    pos = 9
    while datagram[pos] != 0:
        kind = datagram[pos]
        length = int.from_bytes(datagram[pos + 1 : pos + 3], "big")
        if kind == 5:
            return datagram[pos + 3 : pos + 3 + length]
        pos += 3 + length
    raise AssertionError("no PAYLOAD field")


def collect() -> list[tuple[int, bytes, dict[str, Any]]]:
    found = []
    for packet in DOC["packets"]:
        data = bytes.fromhex(packet["hex"])
        if packet["kind"] == "NODE_INFO":
            assert data[0] == MSG_NODE_INFO
            found.append((packet["i"], data[1:], packet["decoded"]))
        elif packet["kind"] in ("PONG", "PENG"):
            found.append((packet["i"], handshake_payload(data), packet["decoded"]["payload_node_info"]))
    return found


VECTORS = collect()


def test_all_unencrypted_node_infos_are_covered() -> None:
    # 2 PONG + 2 PENG (with repeats) and 3 session NODE_INFOs in the plain capture
    assert sorted(i for i, _, _ in VECTORS) == [1, 2, 3, 4, 5, 12, 13]


def _addr_text(addr: tuple[str, int]) -> str:
    return format_sockaddr(addr)


@pytest.mark.parametrize(("index", "body", "expected"), VECTORS, ids=[f"packet{v[0]}" for v in VECTORS])
def test_node_info_vector(index: int, body: bytes, expected: dict[str, Any]) -> None:
    assert len(body) == expected["length"]
    info = NodeInfo.decode(body)
    assert info.node_id.hex() == expected["node_id"]
    assert info.node_id in NODE_IDS
    assert info.peer_timeout == 300
    assert [str(claim) for claim in info.claims] == expected["claims"]
    assert all(isinstance(claim, Range) for claim in info.claims)
    assert [_addr_text(a) for a in info.addrs] == expected["addrs"]
    assert len(info.peers) == len(expected["peers"])
    for peer, want in zip(info.peers, expected["peers"], strict=True):
        assert want["flags"] == "88"
        assert peer.node_id is not None and peer.node_id.hex() == want["node_id"]
        assert peer.node_id in NODE_IDS and peer.node_id != info.node_id
        assert [_addr_text(a) for a in peer.addrs] == want["addrs"]
    # mapped own addresses are published as 16-byte entries: the decoder keeps them mapped
    assert all(host.startswith("::ffff:10.240.0.") for host, _ in info.addrs)
    assert info.encode() == body
