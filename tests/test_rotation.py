"""Key rotation message and state machine (spec 8, 22.7)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpncloud.core.errors import DecodeError
from vpncloud.core.primitives import Algorithm
from vpncloud.core.rotation import KeyInstall, RotationMessage, RotationState

ALG = Algorithm.AES128


def test_message_roundtrip_without_confirmation() -> None:
    msg = RotationMessage(1, bytes(range(32)), None)
    data = msg.encode()
    assert len(data) == 42
    assert data[:8] == (1).to_bytes(8, "big")
    assert data[8] == 32 and data[41] == 0
    assert RotationMessage.decode(data) == msg


def test_message_roundtrip_with_confirmation() -> None:
    msg = RotationMessage(2, bytes(range(32)), bytes(range(32, 64)))
    data = msg.encode()
    assert len(data) == 74
    assert data[41] == 32
    assert RotationMessage.decode(data) == msg
    assert RotationMessage.decode(data + b"trailing") == msg


@pytest.mark.parametrize("cut", [0, 5, 9, 30, 41, 42, 73])
def test_truncated_messages_rejected(cut: int) -> None:
    data = RotationMessage(2, bytes(32), bytes(32)).encode()
    with pytest.raises(DecodeError):
        RotationMessage.decode(data[:cut])


def test_bad_key_lengths_rejected() -> None:
    data = bytearray(RotationMessage(2, bytes(32), bytes(32)).encode())
    data[8] = 31
    with pytest.raises(DecodeError):
        RotationMessage.decode(bytes(data))
    data = bytearray(RotationMessage(2, bytes(32), bytes(32)).encode())
    data[41] = 16
    with pytest.raises(DecodeError):
        RotationMessage.decode(bytes(data))


@given(st.binary(max_size=120))
def test_decode_random_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        RotationMessage.decode(data)


def states(seed: int = 1) -> tuple[RotationState, RotationState]:
    rng = random.Random(seed)
    return RotationState(True, ALG, rng), RotationState(False, ALG, rng)


def test_normal_sequence_ids_and_keys() -> None:
    """Spec 8.4 typical sequence: node1 = initiator, messages 1 -> 2 -> 3 -> 4 with matching keys."""
    n1, n2 = states()
    m1 = n1.initial_message()
    assert m1 is not None and m1.message_id == 1 and m1.confirm is None
    assert n2.initial_message() is None
    assert n2.handle_message(m1) is None  # only stores pending
    assert n2.pending is not None

    m2, inst2 = n2.cycle()
    assert m2 is not None and m2.message_id == 2 and m2.confirm is not None
    assert inst2 is not None and inst2.message_id == 2 and not inst2.send  # own cycle: receive-only
    inst = n1.handle_message(m2)
    assert inst == KeyInstall(inst2.key, 2, True)  # same key, and n1 switches sending to it
    assert len(inst.key) == 16

    m3, inst3 = n1.cycle()
    assert m3 is not None and m3.message_id == 3 and inst3 is not None and not inst3.send
    inst = n2.handle_message(m3)
    assert inst is not None and inst.message_id == 3 and inst.send and inst.key == inst3.key

    m4, inst4 = n2.cycle()
    assert m4 is not None and m4.message_id == 4 and inst4 is not None
    inst = n1.handle_message(m4)
    assert inst is not None and inst.key == inst4.key and inst.message_id % 4 == 0


def test_duplicates_yield_nothing() -> None:
    n1, n2 = states(2)
    m1 = n1.initial_message()
    assert m1 is not None
    n2.handle_message(m1)
    m2, _ = n2.cycle()
    assert m2 is not None
    assert n1.handle_message(m2) is not None
    # the same message again: id 2 > n1's own id 1, so it is processed again but installs nothing
    assert n1.handle_message(m2) is None
    m3, _ = n1.cycle()
    assert m3 is not None
    assert n2.handle_message(m3) is not None
    assert n2.handle_message(m3) is None
    # n2's own id is now... n2 sent 2; id 3 > 2 re-derives pending harmlessly; ids <= own are ignored
    pending = n2.pending
    assert n2.handle_message(RotationMessage(2, bytes(range(1, 33)), None)) is None
    assert n2.pending == pending


def test_lost_first_message_recovered_after_two_cycles() -> None:
    n1, n2 = states(3)
    m1 = n1.initial_message()
    assert m1 is not None
    # m1 lost. First cycle of n1 only sets the timeout flag, the second retransmits id 1.
    assert n1.cycle() == (None, None)
    assert n1.timeout
    again, inst = n1.cycle()
    assert again == m1 and inst is None
    # every further cycle retransmits while nothing arrives
    assert n1.cycle()[0] == m1
    n2.handle_message(again)
    m2, inst2 = n2.cycle()
    assert m2 is not None and inst2 is not None
    inst = n1.handle_message(m2)
    assert inst is not None and inst.key == inst2.key
    assert not n1.timeout


def test_lost_confirmation_retransmitted_with_same_id() -> None:
    n1, n2 = states(4)
    m1 = n1.initial_message()
    assert m1 is not None
    n2.handle_message(m1)
    m2, _ = n2.cycle()  # lost
    assert m2 is not None
    assert n2.cycle() == (None, None)  # timeout flag
    m2b, inst = n2.cycle()
    assert m2b == m2 and inst is None  # same id, same proposal, same confirmation
    assert n1.handle_message(m2b) is not None


def test_reflected_own_message_is_harmless() -> None:
    n1, _ = states(5)
    m1 = n1.initial_message()
    assert m1 is not None
    assert n1.handle_message(m1) is None  # id 1 <= own id 1
    assert n1.pending is None


def test_waiting_side_cycle_does_nothing() -> None:
    _, n2 = states(6)
    assert n2.cycle() == (None, None)
    assert n2.cycle() == (None, None)
