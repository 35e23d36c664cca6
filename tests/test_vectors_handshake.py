"""Every handshake message and encrypted frame captured from VpnCloud 2.4.0 (tests/fixtures/vectors).

For each PING/PONG/PENG: parse, find the signing key through the salted key hash, verify the
signature, check fields, offsets, algorithms, sizes and salted node-id hashes, decode plain NODE_INFO
payloads, and re-encode the message from its parsed fields (Ed25519 is deterministic, so the rebuilt
message must be byte-identical). For encrypted frames: slot, nonce continuity and the 25-byte overhead.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from typing import Any

import pytest
from vectors import SCENARIOS, load_packets, load_scenario

from vpncloud.core import base62
from vpncloud.core.errors import CryptoError
from vpncloud.core.handshake import (
    AlgorithmList,
    decode_init,
    encode_init,
    parse_init,
    salted_node_id_hash,
)
from vpncloud.core.identity import Identity
from vpncloud.core.messages import NodeInfo
from vpncloud.core.peer_crypto import CryptoConfig, PeerCrypto, Reply
from vpncloud.core.primitives import Algorithm, sha256

# core.primitives on the C kernels and on their Python twin (cryptography): each test on both
pytestmark = pytest.mark.usefixtures("crypto_kernels")

# Keys named in the vectors README ("Keys and passwords").
IDENTITIES = {
    "password:test": Identity.from_config(password="test"),
    "password:wrongpass": Identity.from_config(password="wrongpass"),
    "genkey:node1": Identity.from_config(private_key="lbnStfyEf2YpJpg0sMcBn9JmF24pIqSE321OUJ3YUr5"),
    "genkey:node2": Identity.from_config(private_key="Bd2BHu4TUsPBRuHCG0GFbYhFJTrNoGB3fNeMhQG2JOY"),
}
EXPECTED_PUBLIC = {
    "password:test": "6b36b29a19d4408c1aa5f8c146c15f1b91d1ede28ace5aec7387b7954c7c7ab3",
    "password:wrongpass": "bb442bd5062e5ad820f26fd75c04ed3493215a30db4ac49c20902bd6400635f9",
    "genkey:node1": "c461d60c043bd18349b3eb2c95858052ce51240051edd1fc54d94c3efd4e4def",
    "genkey:node2": "418bc11bc95beef4984a0c5b1b2582d23fdf1e4dddb478a290b4d9d3c24d397b",
}
ALL_KEYS = Identity.from_config(
    password="unused", trusted_keys=[base62.encode(bytes.fromhex(h)) for h in EXPECTED_PUBLIC.values()]
)
NODE_ADDRS = {"10.240.0.1:3210": "node1", "10.240.0.2:3210": "node2", "10.240.0.2:3211": "node3"}
STAGES = {"PING": 1, "PONG": 2, "PENG": 3}
FIELD_NAMES = {1: "STAGE", 2: "SALTED_NODE_ID_HASH", 3: "ECDH_PUBLIC_KEY", 4: "ALGORITHMS", 5: "PAYLOAD"}
ENCRYPTED_SIZES = {25, 67, 99, 109, 119}


def handshake_cases() -> list[tuple[str, int]]:
    return [
        (sc, p["i"]) for sc in SCENARIOS for p in load_packets(sc) if p["kind"] in ("PING", "PONG", "PENG")
    ]


CASES = handshake_cases()


def test_all_scenarios_have_handshakes() -> None:
    per = {sc for sc, _ in CASES}
    assert per == set(SCENARIOS)
    assert len(CASES) >= 40


def test_expected_public_keys() -> None:
    for name, ident in IDENTITIES.items():
        assert ident.public_key.hex() == EXPECTED_PUBLIC[name]


def _packet(scenario: str, index: int) -> dict[str, Any]:
    return load_packets(scenario)[index]


def _signer(data: bytes) -> str:
    key = ALL_KEYS.find_trusted(data[1:5], data[5:9])
    assert key is not None, "no known key matches the key hash"
    return next(name for name, ident in IDENTITIES.items() if ident.public_key == key)


@pytest.mark.parametrize(("scenario", "index"), CASES)
def test_handshake_message(scenario: str, index: int) -> None:
    pkt = _packet(scenario, index)
    data: bytes = pkt["data"]
    dec = pkt["decoded"]
    assert len(data) == pkt["len"]

    # 1. identify the signer through SHA-256(pub || salt)[:4] and verify with that key only
    signer = _signer(data)
    assert signer == dec["signer_key"]
    ident = IDENTITIES[signer]
    assert sha256(ident.public_key + data[1:5])[:4] == data[5:9]
    verifier = Identity.from_config(password="other", trusted_keys=[_b62(ident.public_key)])
    msg, key = parse_init(data, verifier)
    assert key == ident.public_key

    # the signature covers exactly bytes 1..END
    assert msg.signed_data == data[1 : msg.end_offset + 1]
    assert msg.end_offset == dec["end_offset"]
    assert data[msg.end_offset] == 0 and data[msg.end_offset + 1] == 64
    assert msg.end_offset + 2 + 64 == len(data)  # nothing after the signature

    # 2. fields: stage, order, offsets
    assert msg.stage == STAGES[pkt["kind"]]
    assert [t for t, _, _ in msg.fields] == dec["field_types_in_order"]
    assert {FIELD_NAMES[t]: off for t, off, _ in msg.fields} == dec["field_offsets"]
    assert msg.salted_node_id_hash is not None
    assert msg.salted_node_id_hash.hex() == dec["salted_node_id_hash"]
    node = NODE_ADDRS[pkt["src"]]
    node_id = load_scenario(scenario)["node_ids"].get(node)
    if node_id is not None:
        salt = msg.salted_node_id_hash[:4]
        assert salted_node_id_hash(salt, bytes.fromhex(node_id)) == msg.salted_node_id_hash

    # 3. algorithms
    if msg.stage in (1, 2):
        assert msg.algorithms is not None and msg.ecdh_public_key is not None
        assert msg.ecdh_public_key.hex() == dec["ecdh_public_key"]
        entries = dec["algorithms"]
        assert msg.algorithms.encode().hex() == "".join(e["hex"] for e in entries)
        assert msg.algorithms.plain_allowed == any(e["name"] == "UNENCRYPTED" for e in entries)
        for (alg, speed), e in zip(
            msg.algorithms.algorithms, [e for e in entries if e["hex"][:2] != "00"], strict=True
        ):
            assert alg.name == e["name"]
            assert math.isclose(speed, e["speed_f32"], rel_tol=0, abs_tol=0)
        k = len(entries)
        expected_len = 140 + 5 * k + (3 + len(msg.payload) if msg.payload is not None else 0)
    else:
        assert msg.ecdh_public_key is None and msg.algorithms is None
        assert msg.payload is not None
        expected_len = 105 + len(msg.payload)
    assert len(data) == expected_len

    # 4. payload: plain NODE_INFO, or a slot-0 frame of NODE_INFO + 24 bytes
    if msg.stage in (2, 3):
        assert msg.payload is not None
        assert len(msg.payload) == dec["payload_len"]
        if "payload_node_info" in dec:
            info = NodeInfo.decode(msg.payload)
            exp = dec["payload_node_info"]
            assert info.node_id.hex() == exp["node_id"]
            assert info.peer_timeout == exp["peer_timeout"]
            assert [str(c) for c in info.claims] == exp["claims"]
            assert len(info.peers) == len(exp["peers"])
            assert info.encode() == msg.payload
        else:
            frame = dec["payload_frame"]
            assert msg.payload[0] == frame["slot"] == 0
            assert msg.payload[1:8].hex() == frame["nonce7"]
            assert msg.payload[1] == 0
            assert len(msg.payload) == frame["plaintext_node_info_len"] + 24

    # 5. re-encode from the parsed fields with the same salt: byte-identical, signature included
    rebuilt = encode_init(
        ident,
        msg.salt,
        msg.stage,
        msg.salted_node_id_hash,
        ecdh_public_key=msg.ecdh_public_key,
        algorithms=AlgorithmList.build(msg.algorithms.algorithms, msg.algorithms.plain_allowed)
        if msg.algorithms
        else None,
        payload=msg.payload,
    )
    assert rebuilt == data


def _b62(key: bytes) -> str:
    return base62.encode(key)


def test_untrusted_scenario_rejected_by_test_node() -> None:
    node1 = Identity.from_config(password="test")
    packets = load_packets("untrusted")
    assert len(packets) == 7
    for p in packets:
        assert p["kind"] == "PING"
        with pytest.raises(CryptoError, match="untrusted peer"):
            parse_init(p["data"], node1)
        # the signature itself is valid for wrongpass's key
        parse_init(p["data"], IDENTITIES["password:wrongpass"])
    # retransmissions are byte-identical, salt included
    assert len({p["data"] for p in packets}) == 1


def test_trusted_messages_rejected_by_wrong_key() -> None:
    wrong = IDENTITIES["password:wrongpass"]
    for sc, i in CASES:
        if sc != "untrusted":
            with pytest.raises(CryptoError, match="untrusted peer"):
                parse_init(_packet(sc, i)["data"], wrong)


def test_keys_chacha_signers() -> None:
    """node1's messages are signed by node1's key, node2's by node2's (README keys-chacha)."""
    for p in load_packets("keys-chacha"):
        if p["kind"] in STAGES:
            expect = "genkey:node1" if p["src"].startswith("10.240.0.1") else "genkey:node2"
            assert _signer(p["data"]) == expect
            msg = decode_init(p["data"])
            if msg.algorithms is not None:
                assert [a for a, _ in msg.algorithms.algorithms] == [Algorithm.CHACHA20]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in ("plain", "untrusted")])
def test_encrypted_frames(scenario: str) -> None:
    """Per sender/receiver/slot the nonce counter grows by exactly 1, handshake payload included."""
    counters: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    seen_handshakes: set[bytes] = set()
    for p in load_packets(scenario):
        data: bytes = p["data"]
        if p["kind"] in ("PONG", "PENG"):
            if data in seen_handshakes:
                continue  # byte-identical retransmission reuses the same payload frame
            seen_handshakes.add(data)
            frame = decode_init(data).payload
            assert frame is not None
        elif p["kind"] == "ENCRYPTED":
            frame = data
            assert len(data) in ENCRYPTED_SIZES
            assert len(data) - 25 == p["decoded"]["ciphertext_len_incl_type"] - 1
            assert data[0] == p["decoded"]["slot"]
        else:
            continue
        assert frame[0] in (0, 1, 2, 3)
        assert frame[1] == 0  # nonce byte 5 is 0 on the wire
        counters[(p["src"], p["dst"], frame[0])].append(int.from_bytes(frame[1:8], "big"))
    assert counters
    for key, values in counters.items():
        steps = [b - a for a, b in itertools.pairwise(values)]
        assert all(s == 1 for s in steps), (key, steps)


def test_rotation_scenario_slot_switch() -> None:
    """aes256-rotation: ROTATION 67 then 99 bytes; only node1 (rotation initiator) switches to slot 2."""
    packets = [p for p in load_packets("aes256-rotation") if p["kind"] == "ENCRYPTED"]
    node1 = [p["data"] for p in packets if p["src"] == "10.240.0.1:3210"]
    node2 = [p["data"] for p in packets if p["src"] == "10.240.0.2:3210"]
    assert len(node1[0]) == 67  # ROTATION id 1 right after PENG
    assert any(len(d) == 99 for d in node2)  # ROTATION id 2 with confirmation
    assert {d[0] for d in node2} == {0}
    first_99 = next(i for i, p in enumerate(packets) if len(p["data"]) == 99)
    after = [p["data"][0] for p in packets[first_99 + 1 :] if p["src"] == "10.240.0.1:3210"]
    assert after and set(after) == {2}


# The captured PINGs replayed into our responder (README: "Replaying #0 into a Python responder
# gives a PONG that can be checked structurally"). Responder = node1's configuration.
REPLAY = [
    # scenario, node1 identity, node1's trusted keys, node1 algorithms, plain, expected PONG size
    ("plain", "password:test", [], [], True, 207),
    ("aes128", "password:test", [], [(Algorithm.AES128, 4000.0)], False, 231),
    ("aes256-rotation", "password:test", [], [(Algorithm.AES256, 3716.4)], False, 231),
    ("keys-chacha", "genkey:node1", ["genkey:node2"], [(Algorithm.CHACHA20, 1724.4)], False, 231),
    (
        "stats",
        "password:test",
        [],
        [(Algorithm.AES128, 3000.0), (Algorithm.AES256, 3000.0), (Algorithm.CHACHA20, 1000.0)],
        False,
        241,
    ),
]


@pytest.mark.parametrize(("scenario", "signer", "trusted", "algs", "plain", "pong_len"), REPLAY)
def test_replay_captured_ping_into_responder(
    scenario: str,
    signer: str,
    trusted: list[str],
    algs: list[tuple[Algorithm, float]],
    plain: bool,
    pong_len: int,
) -> None:
    node_info = bytes(59)  # same size as node1's captured handshake NODE_INFO
    ident = IDENTITIES[signer]
    if trusted:
        ident = Identity(ident.seed, [IDENTITIES[t].public_key for t in trusted])
    ping = next(p["data"] for p in load_packets(scenario) if p["kind"] == "PING")
    responder = PeerCrypto.responder(
        CryptoConfig(ident, algs, plain), b"\x01" * 16, node_info, random.Random(1)
    )
    reply = responder.handle_message(ping)
    assert isinstance(reply, Reply)
    assert len(reply.data) == pong_len
    # the peer (node2's key list) accepts our PONG's signature
    node2_trust = IDENTITIES["genkey:node2"] if scenario == "keys-chacha" else IDENTITIES["password:test"]
    if scenario == "keys-chacha":
        node2_trust = Identity(node2_trust.seed, [IDENTITIES["genkey:node1"].public_key])
    msg, key = parse_init(reply.data, node2_trust)
    assert key == ident.public_key and msg.stage == 2
    assert [t for t, _, _ in msg.fields] == [1, 2, 3, 4, 5]
    # the captured PONG of the original has the same field offsets
    orig = next(p for p in load_packets(scenario) if p["kind"] == "PONG")
    assert {FIELD_NAMES[t]: off for t, off, _ in msg.fields} == orig["decoded"]["field_offsets"]
    assert responder.algorithm is None  # not negotiated until PENG completes the session
