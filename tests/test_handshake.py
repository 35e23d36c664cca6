"""Handshake codec and state machine (spec 6, 22.5)."""

from __future__ import annotations

import contextlib
import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncloud.core.errors import CryptoError, DecodeError, InitError, InitFatal
from vpncloud.core.handshake import (
    TRANSITIONS,
    AlgorithmList,
    Handshake,
    State,
    decode_init,
    encode_init,
    parse_init,
    salted_node_id_hash,
    select_algorithm,
)
from vpncloud.core.identity import Identity
from vpncloud.core.primitives import Algorithm

# core.primitives on the C kernels and on their Python twin (cryptography): each test on both
pytestmark = pytest.mark.usefixtures("crypto_kernels")

A128, A256, CHA = Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20
IDENT = Identity.from_config(password="test")
ALGS = AlgorithmList.build([(A128, 600.0), (A256, 500.0), (CHA, 400.0)], False)


def make(algs: AlgorithmList = ALGS, seed: int = 1) -> tuple[Handshake, bytes, Handshake]:
    rng = random.Random(seed)
    a, ping = Handshake.initiator(IDENT, b"A" * 16, b"info-a", algs, rng)
    b = Handshake(IDENT, b"B" * 16, b"info-b", algs, rng)
    return a, ping, b


def test_transition_table_is_total() -> None:
    assert {k for k in TRANSITIONS} == {(s, st_) for s in State for st_ in (1, 2, 3)}


def test_normal_handshake() -> None:
    a, ping, b = make()
    assert len(ping) == 155  # 3 algorithms (spec 6.3)
    step = b.handle(ping)
    assert b.state is State.EXPECT_PENG and step.session is None and step.reply is not None
    pong = step.reply
    assert len(pong) == 158 + len(b"info-b") + 24
    step = a.handle(pong)
    assert a.state is State.WAITING_TO_CLOSE
    assert step.session is not None and step.session.initiator
    assert step.session.peer_payload == b"info-b" and step.session.algorithm is A128
    peng = step.reply
    assert peng is not None and len(peng) == 105 + len(b"info-a") + 24
    core_a = step.session.core
    step = b.handle(peng)
    assert b.state is State.CLOSING and step.reply is None
    assert step.session is not None and not step.session.initiator
    assert step.session.peer_payload == b"info-a"
    core_b = step.session.core
    assert core_a is not None and core_b is not None
    assert core_b.decrypt(core_a.encrypt(b"x")) == b"x"
    assert core_a.decrypt(core_b.encrypt(b"y")) == b"y"


def test_plain_handshake_sizes() -> None:
    plain = AlgorithmList.build([], True)
    a, ping, b = make(plain)
    assert len(ping) == 145
    pong = b.handle(ping).reply
    assert pong is not None and len(pong) == 148 + 6
    step = a.handle(pong)
    assert step.session is not None and step.session.core is None
    assert step.session.algorithm is Algorithm.PLAIN and step.session.peer_payload == b"info-b"
    assert step.reply is not None and len(step.reply) == 105 + 6
    assert b.handle(step.reply).session is not None


def test_lost_messages_recovered_by_ticks() -> None:
    a, ping, b = make(seed=2)
    # PING lost: A retransmits it verbatim
    assert a.every_tick() == ping
    pong = b.handle(ping).reply
    assert pong is not None
    # PONG lost: B retransmits it verbatim; a repeated PING also gets the same PONG
    assert b.every_tick() == pong
    assert b.handle(ping).reply == pong
    step = a.handle(pong)
    peng = step.reply
    assert peng is not None
    # PENG lost: B retransmits PONG, A (WAITING_TO_CLOSE) answers with the same PENG
    assert a.every_tick() is None
    again = a.handle(b.every_tick() or b"")
    assert again.reply == peng and again.session is None
    assert b.handle(peng).session is not None


def test_timeout_after_120_ticks() -> None:
    a, ping, _ = make(seed=3)
    for _ in range(120):
        assert a.every_tick() == ping
    with pytest.raises(InitFatal, match="timeout"):
        a.every_tick()
    assert a.state is State.CLOSING
    assert a.every_tick() is None


def test_progress_resets_retries() -> None:
    _a, ping, b = make(seed=4)
    for _ in range(100):
        b.every_tick()  # a fresh responder has nothing to send
    assert b.handle(ping).reply is not None
    for _ in range(120):
        assert b.every_tick() is not None
    with pytest.raises(InitFatal):
        b.every_tick()


def test_initiator_keeps_state_61_ticks() -> None:
    a, ping, b = make(seed=5)
    pong = b.handle(ping).reply
    assert pong is not None
    a.handle(pong)
    for _ in range(60):
        a.every_tick()
        assert a.state is State.WAITING_TO_CLOSE
    a.every_tick()
    assert a.state is State.CLOSING
    assert a.handle(pong).reply is None  # CLOSING ignores everything


def test_untrusted_key() -> None:
    _a, ping, _ = make()
    other = Identity.from_config(password="wrongpass")
    b = Handshake(other, b"B" * 16, b"", ALGS, random.Random(1))
    with pytest.raises(CryptoError, match="untrusted"):
        b.handle(ping)
    assert b.state is State.EXPECT_PING


def test_tampered_stage_length() -> None:
    _, ping, b = make()
    bad = bytearray(ping)
    bad[11] ^= 1  # offset 10 of the body = second byte of the STAGE length field
    with pytest.raises(CryptoError):
        b.handle(bytes(bad))
    assert b.state is State.EXPECT_PING
    for pos in (20, 40, 80, 120, len(ping) - 1):
        bad = bytearray(ping)
        bad[pos] ^= 0x10
        with pytest.raises(CryptoError):
            b.handle(bytes(bad))
    assert b.handle(ping).reply is not None  # the real one still works


def test_connected_to_self() -> None:
    a, ping, _ = make()
    with pytest.raises(InitFatal, match="self"):
        a.handle(ping)


def test_stray_peng_to_fresh_responder_is_fatal() -> None:
    a, ping, b = make(seed=6)
    pong = b.handle(ping).reply
    assert pong is not None
    peng = a.handle(pong).reply
    assert peng is not None
    fresh = Handshake(IDENT, b"B" * 16, b"info-b", ALGS, random.Random(7))
    with pytest.raises(InitFatal, match="invalid stage as first message"):
        fresh.handle(peng)


@pytest.mark.parametrize("seed", range(6))
def test_concurrent_init_resolves_by_salted_hash(seed: int) -> None:
    rng = random.Random(seed)
    a, ping_a = Handshake.initiator(IDENT, b"A" * 16, b"info-a", ALGS, rng)
    b, ping_b = Handshake.initiator(IDENT, b"B" * 16, b"info-b", ALGS, rng)
    step_a = a.handle(ping_b)
    step_b = b.handle(ping_a)
    high, low = (a, b) if a.salted_hash > b.salted_hash else (b, a)
    s_high, s_low = (step_a, step_b) if high is a else (step_b, step_a)
    assert s_high.reply is None  # the higher one ignores the lower PING and stays initiator
    assert high.state is State.EXPECT_PONG
    assert low.state is State.EXPECT_PENG and s_low.reply is not None  # became responder
    done = high.handle(s_low.reply)
    assert done.session is not None and done.session.initiator and done.reply is not None
    fin = low.handle(done.reply)
    assert fin.session is not None and not fin.session.initiator


def test_x25519_small_order_key_is_fatal() -> None:
    rng = random.Random(1)
    b = Handshake(IDENT, b"B" * 16, b"", ALGS, rng)
    ping = encode_init(
        IDENT, b"salt", 1, salted_node_id_hash(b"abcd", b"A" * 16), ecdh_public_key=bytes(32), algorithms=ALGS
    )
    with pytest.raises(InitFatal):
        b.handle(ping)
    short = encode_init(
        IDENT, b"salt", 1, salted_node_id_hash(b"abcd", b"A" * 16), ecdh_public_key=bytes(5), algorithms=ALGS
    )
    with pytest.raises(InitFatal):
        Handshake(IDENT, b"B" * 16, b"", ALGS, rng).handle(short)


def test_missing_fields_and_bad_stage_are_init_errors() -> None:
    h = salted_node_id_hash(b"abcd", b"A" * 16)
    b = Handshake(IDENT, b"B" * 16, b"", ALGS, random.Random(1))
    cases = [
        encode_init(IDENT, b"salt", 1, h, algorithms=ALGS),  # PING without ECDH key
        encode_init(IDENT, b"salt", 1, h, ecdh_public_key=bytes(32)),  # PING without algorithms
        encode_init(IDENT, b"salt", 2, h, ecdh_public_key=bytes(32), algorithms=ALGS),  # PONG w/o payload
        encode_init(IDENT, b"salt", 3, h),  # PENG without payload
        encode_init(IDENT, b"salt", 4, h, payload=b""),  # invalid stage
        encode_init(IDENT, b"salt", 0, h, payload=b""),
    ]
    for msg in cases:
        with pytest.raises(InitError):
            b.handle(msg)
    assert b.state is State.EXPECT_PING


def test_unknown_fields_skipped_and_reverse_order_accepted() -> None:
    # build a PING with fields in reverse order and an unknown field type 9 first (spec 6.3)
    rng = random.Random(8)
    a, ping, _ = make(seed=8)
    msg = decode_init(ping)
    assert msg.ecdh_public_key is not None and msg.salted_node_id_hash is not None
    body = bytearray(b"salt" + IDENT.key_hash(b"salt"))
    body += struct.pack(">BH", 9, 3) + b"xyz"
    algs = ALGS.encode()
    body += struct.pack(">BH", 4, len(algs)) + algs
    body += struct.pack(">BH", 3, 32) + msg.ecdh_public_key
    body += struct.pack(">BH", 2, 20) + msg.salted_node_id_hash
    body += struct.pack(">BH", 1, 1) + b"\x01"
    body.append(0)
    sig = IDENT.sign(bytes(body))
    data = b"\xff" + bytes(body) + b"\x40" + sig + b"ignored trailing bytes"
    b = Handshake(IDENT, b"B" * 16, b"info-b", ALGS, rng)
    pong = b.handle(data).reply
    assert pong is not None
    assert a.handle(pong).session is not None


def test_wrong_signature_length_rejected() -> None:
    _, ping, b = make()
    bad = bytearray(ping)
    end = decode_init(ping).end_offset
    bad[end + 1] = 63
    with pytest.raises(CryptoError):
        b.handle(bytes(bad))


@pytest.mark.parametrize("cut", [0, 1, 9, 10, 12, 40, 89, 90, 91, 154])
def test_truncated_messages_are_clean_errors(cut: int) -> None:
    _, ping, b = make()
    with pytest.raises(CryptoError):  # InitError is a CryptoError
        b.handle(ping[:cut])
    with pytest.raises(DecodeError):
        decode_init(ping[:cut])


L1 = [(A128, 600.0), (A256, 500.0), (CHA, 400.0)]


@pytest.mark.parametrize(
    ("a_list", "a_plain", "b_list", "b_plain", "expected"),
    [
        (L1, False, L1, False, A128),
        ([(A256, 500.0), (CHA, 400.0)], False, [(A128, 600.0), (A256, 500.0)], False, A256),
        (L1, False, [(A128, 40.0), (A256, 50.0), (CHA, 60.0)], False, CHA),
        (L1, True, L1, True, Algorithm.PLAIN),
        (L1, True, L1, False, A128),
        ([(A128, 600.0)], True, [(A256, 500.0), (CHA, 400.0)], False, None),
    ],
)
def test_algorithm_negotiation(
    a_list: list[tuple[Algorithm, float]],
    a_plain: bool,
    b_list: list[tuple[Algorithm, float]],
    b_plain: bool,
    expected: Algorithm | None,
) -> None:
    """Spec 22.5 table, through both select_algorithm and a real handshake."""
    la, lb = AlgorithmList.build(a_list, a_plain), AlgorithmList.build(b_list, b_plain)
    rng = random.Random(1)
    a, ping = Handshake.initiator(IDENT, b"A" * 16, b"ia", la, rng)
    b = Handshake(IDENT, b"B" * 16, b"ib", lb, rng)
    if expected is None:
        with pytest.raises(InitFatal, match="No common"):
            select_algorithm(lb, la)
        with pytest.raises(InitFatal, match="No common"):
            b.handle(ping)  # failure at B
        return
    assert select_algorithm(la, lb) is expected
    assert select_algorithm(lb, la) is expected
    pong = b.handle(ping).reply
    assert pong is not None
    step = a.handle(pong)
    assert step.session is not None and step.session.algorithm is expected
    assert b.algorithm is expected


def test_tie_goes_to_local_order() -> None:
    la = AlgorithmList.build([(A128, 500.0), (A256, 500.0)], False)
    lb = AlgorithmList.build([(A256, 500.0), (A128, 500.0)], False)
    assert select_algorithm(la, lb) is A128
    assert select_algorithm(lb, la) is A256  # quirk 21


def test_algorithm_list_codec() -> None:
    lst = AlgorithmList.build([(Algorithm.PLAIN, 0.0), (A128, 3795.037)], False)
    enc = lst.encode()
    assert enc[:5] == bytes.fromhex("007f800000")
    assert enc[5:] == bytes.fromhex("01456d3098")
    dec = AlgorithmList.decode(enc + bytes.fromhex("0942000000") + b"\x01\x02")  # unknown id 9, tail
    assert dec.plain_allowed and dec.algorithms == ((A128, lst.algorithms[0][1]),)
    assert math.isclose(dec.algorithms[0][1], 3795.037, rel_tol=1e-6)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_into_parser(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_init(data)
    b = Handshake(IDENT, b"B" * 16, b"", ALGS, random.Random(1))
    for prefix in (b"", b"\xff", ping_prefix()):
        with contextlib.suppress(CryptoError, InitError, InitFatal):
            b.handle(prefix + data)


def ping_prefix() -> bytes:
    # salt + a key hash that matches the trusted key, so random bytes reach the field parser
    return b"\xff" + b"salt" + IDENT.key_hash(b"salt")


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_fields_after_valid_header(data: bytes) -> None:
    b = Handshake(IDENT, b"B" * 16, b"", ALGS, random.Random(1))
    with contextlib.suppress(CryptoError, InitError, InitFatal):
        b.handle(ping_prefix() + data)
    with contextlib.suppress(CryptoError):
        parse_init(ping_prefix() + data, IDENT)
