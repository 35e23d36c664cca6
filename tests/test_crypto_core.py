"""Crypto core: slots, nonces, replay window (spec 7, 22.4)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpncloud.core.crypto_core import REPLAY_WINDOW, CryptoCore, increment_nonce
from vpncloud.core.errors import CryptoError, ReplayError
from vpncloud.core.primitives import Algorithm

AEADS = [Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20]


def pair(alg: Algorithm, seed: int = 1) -> tuple[CryptoCore, CryptoCore]:
    rng = random.Random(seed)
    key = rng.randbytes(alg.key_len)
    return CryptoCore(alg, key, True, rng), CryptoCore(alg, key, False, rng)


def test_nonce_increment() -> None:
    zero = bytes(12)
    one = increment_nonce(zero)
    assert one == bytes(11) + b"\x01"
    assert increment_nonce(one) == bytes(11) + b"\x02"
    assert increment_nonce(bytes(10) + b"\x00\xff") == bytes(10) + b"\x01\x00"
    assert increment_nonce(b"\xff" * 12) == zero


@pytest.mark.parametrize("alg", AEADS)
def test_roundtrip_1000_random_bytes(alg: Algorithm) -> None:
    sender, receiver = pair(alg)
    data = random.Random(5).randbytes(1000)
    frame = sender.encrypt(data)
    assert len(frame) == 1000 + 8 + 16
    assert frame[0] == 0
    assert receiver.decrypt(frame) == data
    back = receiver.encrypt(data)
    assert sender.decrypt(back) == data


@pytest.mark.parametrize("alg", AEADS)
def test_nonce_layout_and_half(alg: Algorithm) -> None:
    sender, receiver = pair(alg)
    frames = [sender.encrypt(b"x") for _ in range(3)]
    counters = [int.from_bytes(f[2:8], "big") for f in frames]
    assert [f[1] for f in frames] == [0, 0, 0]  # nonce byte 5 stays 0
    assert counters[1] == counters[0] + 1 and counters[2] == counters[1] + 1
    # a frame reflected back to its own sender fails (receiver uses the opposite half byte)
    with pytest.raises(CryptoError):
        sender.decrypt(frames[0])
    # the two halves differ, so both directions with one key never reuse a nonce
    r_frames = [receiver.encrypt(b"x") for _ in range(2)]
    for f in r_frames:
        assert sender.decrypt(f) == b"x"
        with pytest.raises(CryptoError):
            receiver.decrypt(f)


@pytest.mark.parametrize("alg", AEADS)
@pytest.mark.parametrize("offset", [0, 1, 7, 8, -1])
def test_tampering_fails_original_still_works(alg: Algorithm, offset: int) -> None:
    sender, receiver = pair(alg)
    frame = sender.encrypt(b"hello")
    bad = bytearray(frame)
    bad[offset] ^= 1
    with pytest.raises(CryptoError):
        receiver.decrypt(bytes(bad))
    assert receiver.decrypt(frame) == b"hello"


@pytest.mark.parametrize("length", [0, 1, 10, 23])
def test_short_frames_rejected(length: int) -> None:
    _, receiver = pair(Algorithm.AES128)
    with pytest.raises(CryptoError, match="too short"):
        receiver.decrypt(bytes(length))


def test_minimal_frame_is_empty_plaintext() -> None:
    sender, receiver = pair(Algorithm.CHACHA20)
    frame = sender.encrypt(b"")
    assert len(frame) == 24
    assert receiver.decrypt(frame) == b""


def test_replay_window() -> None:
    sender, receiver = pair(Algorithm.AES256)
    frame = sender.encrypt(b"data")
    assert receiver.decrypt(frame) == b"data"
    # an exact duplicate inside the window: the original accepts it (quirk 16), the bitmap does not
    with pytest.raises(ReplayError, match="Duplicate nonce"):
        receiver.decrypt(frame)
    receiver.every_tick()
    with pytest.raises(ReplayError, match="Duplicate nonce"):
        receiver.decrypt(frame)
    receiver.every_tick()
    with pytest.raises(ReplayError, match="Old nonce"):
        receiver.decrypt(frame)
    assert receiver.decrypt(sender.encrypt(b"new")) == b"new"


def test_replay_window_in_every_decrypt_path() -> None:
    sender, receiver = pair(Algorithm.CHACHA20)
    frames = [sender.encrypt(bytes((0, i)) * 50) for i in range(6)]
    # reordered and duplicated inside one batch: every nonce once
    batch = [frames[2], frames[0], frames[2], frames[1], frames[0]]
    assert [p is not None for p in receiver.decrypt_many(batch)] == [True, True, False, True, False]
    # a train (all frames of one length) repeating frames already seen and one new one
    train = frames[1] + frames[3] + frames[3] + frames[2]
    _rows, lengths = receiver.decrypt_train(train, len(frames[0]))
    assert lengths == [-1, 100, -1, -1]
    with pytest.raises(ReplayError):
        receiver.decrypt(frames[3])
    assert receiver.decrypt(frames[5]) == bytes((0, 5)) * 50


def test_replay_window_edges() -> None:
    sender, receiver = pair(Algorithm.AES128)
    frames = [sender.encrypt(i.to_bytes(2, "big")) for i in range(200)]
    assert receiver.decrypt(frames[100])
    # the first frame of a key: a few sent just before it are still accepted, once
    assert receiver.decrypt(frames[99]) and receiver.decrypt(frames[40])
    with pytest.raises(ReplayError):
        receiver.decrypt(frames[99])
    assert receiver.decrypt(frames[150])
    for i in (120, 149, 101):  # holes of the gap 101..149, each once
        assert receiver.decrypt(frames[i])
        with pytest.raises(ReplayError):
            receiver.decrypt(frames[i])
    # REPLAY_WINDOW nonces later the rest of that gap is too old to tell from a replay, while the
    # newest holes of the long gap are still accepted
    for _ in range(REPLAY_WINDOW - 81):
        sender.encrypt(b"")
    near = sender.encrypt(b"near")
    assert receiver.decrypt(sender.encrypt(b"far"))
    with pytest.raises(ReplayError):
        receiver.decrypt(frames[102])
    assert receiver.decrypt(near) == b"near"
    # a jump far ahead forgets everything behind it
    for _ in range(3 * REPLAY_WINDOW):
        sender.encrypt(b"")
    ahead = [sender.encrypt(bytes((i,))) for i in range(20)]
    assert receiver.decrypt(ahead[19])
    with pytest.raises(ReplayError):
        receiver.decrypt(ahead[18])


def test_many_holes_stay_bounded() -> None:
    sender, receiver = pair(Algorithm.CHACHA20)
    for _ in range(50):
        for _ in range(100):
            sender.encrypt(b"")  # lost
        assert receiver.decrypt(sender.encrypt(b"x"))
    assert all(len(slot.holes) <= 1024 + 100 for slot in receiver._slots)


def test_forged_frame_marks_nothing() -> None:
    sender, receiver = pair(Algorithm.AES256)
    frame = sender.encrypt(b"data")
    forged = frame[:-1] + bytes((frame[-1] ^ 1,))
    with pytest.raises(CryptoError):
        receiver.decrypt(forged)
    assert receiver.decrypt(frame) == b"data"


def test_reordering_inside_and_outside_window() -> None:
    sender, receiver = pair(Algorithm.AES128)
    f1, f2, f3 = (sender.encrypt(bytes([i])) for i in range(3))
    assert receiver.decrypt(f3) == b"\x02"
    assert receiver.decrypt(f1) == b"\x00"  # reordered, same tick: fine
    receiver.every_tick()
    assert receiver.decrypt(f2) == b"\x01"  # one tick later: still fine
    receiver.every_tick()
    with pytest.raises(CryptoError, match="Old nonce"):
        receiver.decrypt(f2)


def test_dummy_slots_fail() -> None:
    sender, receiver = pair(Algorithm.AES128)
    frame = sender.encrypt(b"abc")
    for slot in (1, 2, 3):
        with pytest.raises(CryptoError):
            receiver.decrypt(bytes([slot]) + frame[1:])
    # the slot byte is taken mod 4
    assert receiver.decrypt(bytes([4]) + frame[1:]) == b"abc"


def test_rotation_at_core_level() -> None:
    # spec 22.4 "Rotation at the core level"
    sender, receiver = pair(Algorithm.AES128, seed=9)
    rng = random.Random(99)
    key1, key2 = rng.randbytes(16), rng.randbytes(16)
    receiver.rotate(key1, 1, False)
    assert receiver.send_slot == 0
    assert receiver.decrypt(sender.encrypt(b"a")) == b"a"
    assert sender.decrypt(receiver.encrypt(b"b")) == b"b"
    sender.rotate(key1, 1, True)
    assert sender.send_slot == 1
    frame = sender.encrypt(b"c")
    assert frame[0] == 1
    assert receiver.decrypt(frame) == b"c"
    assert sender.decrypt(receiver.encrypt(b"d")) == b"d"
    sender.rotate(key2, 2, True)
    with pytest.raises(CryptoError):
        receiver.decrypt(sender.encrypt(b"e"))
    receiver.rotate(key2, 2, False)
    assert receiver.decrypt(sender.encrypt(b"f")) == b"f"
    assert sender.decrypt(receiver.encrypt(b"g")) == b"g"


def test_rotated_slot_has_fresh_nonce_state() -> None:
    sender, receiver = pair(Algorithm.AES128, seed=4)
    for _ in range(3):
        receiver.decrypt(sender.encrypt(b"x"))
    receiver.every_tick()
    receiver.every_tick()
    key = bytes(range(16))
    sender.rotate(key, 2, True)
    receiver.rotate(key, 2, False)
    # new slot: new random counter start, and the receiver's window for it starts at 0
    assert receiver.decrypt(sender.encrypt(b"y")) == b"y"


@given(st.binary(max_size=200))
def test_decrypt_random_bytes_never_crashes(data: bytes) -> None:
    _, receiver = pair(Algorithm.AES128)
    with contextlib.suppress(CryptoError):
        receiver.decrypt(data)


@pytest.mark.parametrize("alg", [Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20])
@pytest.mark.parametrize("lengths", [[1400] * 44, [1400] * 10 + [7], [60, 60], [1]])
def test_encrypt_rows_equals_encrypt_many(alg: Algorithm, lengths: list[int]) -> None:
    """The T1 fast path (rows in one buffer -> one train) puts the same bytes on the wire as one
    ``encrypt`` per packet, and the peer decrypts every datagram."""
    from vpncloud.fastpath.rows import PacketRows

    rng = random.Random(len(lengths) + lengths[-1])
    packets = [rng.randbytes(n) for n in lengths]
    stride = 1 + max(lengths) + 3  # rows may be wider than the packets
    buf = bytearray(rng.randbytes(stride * len(lengths)))  # garbage in the free byte and padding
    for i, p in enumerate(packets):
        buf[i * stride + 1 : i * stride + 1 + len(p)] = p
    a1, b = pair(alg, seed=9)
    a2, _ = pair(alg, seed=9)
    train = a1.encrypt_rows(0, PacketRows(buf, stride, lengths))
    want = a2.encrypt_many(b"\x00", packets)
    assert train.datagrams() == want
    assert train.count == len(lengths) and train.seg == len(want[0])
    assert [b.decrypt(d) for d in train.datagrams()] == [b"\x00" + p for p in packets]
    # the counters moved on exactly as far
    assert a1.encrypt(b"x") == a2.encrypt(b"x")
