"""The data-plane kernels (issue 21): the C extension and its Python twin, the same tests for both,
and differential tests that compare them byte for byte on random and malformed input."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest
from conftest import NO_C, c_kernels
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from gro_support import TWISTS, layout, train_rows, twist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpncloud import fastpath
from vpncloud.core.crypto_core import CryptoCore
from vpncloud.core.primitives import Algorithm
from vpncloud.fastpath.rows import PacketRows

KEY_LEN = {1: 16, 2: 32, 3: 32}
HALF = 0x80


C = c_kernels()


def _reference(alg: int, key: bytes) -> Any:
    return ChaCha20Poly1305(key) if alg == 3 else AESGCM(key)


def _frame(ref: Any, slot: int, nonce: int, plain: bytes) -> bytes:
    nb = nonce.to_bytes(12, "big")
    return bytes((slot,)) + nb[5:] + ref.encrypt(nb, plain, None)


@pytest.mark.parametrize("alg", [1, 2, 3])
def test_seal_rows_gives_the_frames_of_the_spec(kernels: ModuleType, alg: int) -> None:
    """Each frame is slot id + nonce bytes 5..11 + AEAD(prefix + packet), nonces counting up."""
    rng = random.Random(alg)
    key = rng.randbytes(KEY_LEN[alg])
    ref = _reference(alg, key)
    stride, length, last, count = 1500, 1400, 333, 5
    src = bytearray(rng.randbytes(stride * count))
    first = (HALF << 88) | (1 << 56) - 3  # crosses into byte 4: the header keeps 7 bytes only
    out = kernels.Aead(alg, key).seal_rows(
        7, src, stride, count, length, last, 2, first >> 64, first & (2**64 - 1)
    )
    want = b"".join(
        _frame(
            ref,
            2,
            first + i,
            b"\x07" + bytes(src[i * stride + 1 : i * stride + 1 + (last if i == 4 else length)]),
        )
        for i in range(count)
    )
    assert bytes(out) == want


@pytest.mark.parametrize("alg", [1, 2, 3])
def test_open_train_opens_checks_the_floor_and_reports_failures(kernels: ModuleType, alg: int) -> None:
    rng = random.Random(alg)
    key = rng.randbytes(KEY_LEN[alg])
    ref = _reference(alg, key)
    good = kernels.Aead(alg, key)
    other = kernels.Aead(alg, rng.randbytes(KEY_LEN[alg]))
    seg = 100
    base = HALF << 88
    plains = [rng.randbytes(seg - 24) for _ in range(6)] + [b"short"]
    frames = [_frame(ref, 0, base | (1000 + i), p) for i, p in enumerate(plains)]
    frames[1] = frames[1][:50] + bytes((frames[1][50] ^ 1,)) + frames[1][51:]  # bad tag
    frames[2] = _frame(ref, 0, base | 10, plains[2])  # below the floor
    frames[3] = b"\xff" + frames[3][1:]  # not a session frame (a handshake)
    frames[4] = _frame(ref, 1, base | 2000, plains[4])  # slot 1 holds another key
    rows, lengths = kernels.open_train((good, other, good, good), (500, 0, 0, 0), HALF, b"".join(frames), seg)
    assert lengths == [76, -1, -1, -1, -1, 76, 5]
    stride = seg - 24
    for i in (0, 5, 6):
        assert bytes(rows[i * stride : i * stride + lengths[i]]) == plains[i]
    # nothing of a frame that failed reaches its row
    assert bytes(rows[stride : 5 * stride]) == bytes(4 * stride)


def test_open_train_stops_at_a_truncated_last_frame(kernels: ModuleType) -> None:
    aead = kernels.Aead(2, bytes(32))
    rows, lengths = kernels.open_train((aead,) * 4, (0,) * 4, HALF, bytes(100 + 10), 100)
    assert lengths == [-1, -1]
    assert len(rows) == 2 * 76


@pytest.mark.parametrize(
    "args",
    [
        (256, b"x" * 100, 10, 1, 5, 5, 0, 0, 0),  # prefix is a byte
        (0, b"x" * 100, 10, 0, 5, 5, 0, 0, 0),  # no rows
        (0, b"x" * 100, 5, 1, 5, 5, 0, 0, 0),  # stride too small for the type byte
        (0, b"x" * 100, 10, 1, 5, 6, 0, 0, 0),  # last row longer than the others
        (0, b"x" * 20, 10, 3, 5, 5, 0, 0, 0),  # buffer too short for the rows
        (0, b"x" * 100, 10, 1, 5, 5, 0, 1 << 32, 0),  # nonce over 96 bits
        (0, b"x" * 100, 10, 1, -1, 0, 0, 0, 0),  # negative length
        (0, b"x" * 100, 10, 1, 5, 5, 256, 0, 0),  # slot id is a byte
    ],
)
def test_seal_rows_refuses_what_does_not_fit(kernels: ModuleType, args: tuple[Any, ...]) -> None:
    with pytest.raises(kernels.KernelError):
        kernels.Aead(2, bytes(32)).seal_rows(*args)


def test_bad_keys_and_layouts_are_clear_errors(kernels: ModuleType) -> None:
    assert issubclass(kernels.KernelError, ValueError)
    for alg, key in ((0, b""), (1, bytes(32)), (3, bytes(16)), (9, bytes(32))):
        with pytest.raises(kernels.KernelError):
            kernels.Aead(alg, key)
    aead = kernels.Aead(3, bytes(32))
    with pytest.raises(kernels.KernelError):
        aead.seal(bytes(11), b"data")
    for slots, floors, half, data, seg in (
        ((aead,) * 3, (0,) * 4, HALF, b"x" * 30, 30),  # three slots
        ((aead,) * 4, (0,) * 4, HALF, b"x" * 30, 24),  # segments without room for a byte
        ((aead,) * 4, (0,) * 4, HALF, b"", 30),  # nothing
        ((aead,) * 4, (0,) * 4, 256, b"x" * 30, 30),  # the half byte is a byte
        ((aead, aead, aead, "key"), (0,) * 4, HALF, b"x" * 30, 30),  # not a kernel key
        ((aead,) * 4, (0, 0, 0, -1), HALF, b"x" * 30, 30),  # a negative floor
        ((aead,) * 4, (0, 0, 0, 1 << 64), HALF, b"x" * 30, 30),  # a floor beyond 64 bits
    ):
        with pytest.raises(kernels.KernelError):
            kernels.open_train(slots, floors, half, data, seg)


@pytest.mark.parametrize("alg", [Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20])
def test_crypto_core_rows_and_trains_round_trip(alg: Algorithm) -> None:
    """What the node runs (kernels chosen at import): rows sealed by one core open in the other,
    equal to encrypt_many's frames, and a replayed train opens no more."""
    rng = random.Random(5)
    key = rng.randbytes(alg.key_len)
    a = CryptoCore(alg, key, True, rng)
    b = CryptoCore(alg, key, False, rng)
    twin = CryptoCore(alg, key, True, random.Random(5))
    twin._slots[0].nonce = a._slots[0].nonce
    stride, count = 1450, 8
    lengths = [1400] * (count - 1) + [200]
    buf = bytearray(rng.randbytes(stride * count))
    rows = PacketRows(buf, stride, lengths)
    train = a.encrypt_rows(0, rows)
    assert bytes(train.buf) == b"".join(twin.encrypt_many(b"\x00", rows.packets()))
    opened, sizes = b.decrypt_train(bytes(train.buf), train.seg)
    assert sizes == [1401] * (count - 1) + [201]
    for i, packet in enumerate(rows.packets()):
        assert bytes(opened[i * 1401 + 1 : i * 1401 + 1 + len(packet)]) == packet
    b.every_tick()
    b.every_tick()
    assert b.decrypt_train(bytes(train.buf), train.seg)[1] == [-1] * count


# --- differential: C against Python, byte for byte ---------------------------------------------

needs_c = pytest.mark.skipif(C is None, reason=NO_C)
PY = fastpath.implementation("python")


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        result = call()
    except ValueError as err:
        return ("error", type(err).__name__)
    if isinstance(result, tuple):
        return ("ok", (bytes(result[0]), *result[1:]))
    return ("ok", bytes(result))


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alg=st.sampled_from([1, 2, 3]),
    prefix=st.integers(0, 255),
    src=st.binary(max_size=600),
    stride=st.integers(-2, 200),
    count=st.integers(-1, 6),
    length=st.integers(-2, 150),
    last=st.integers(-2, 150),
    slot=st.integers(0, 255),
    nonce=st.integers(0, 2**96 - 1),
)
def test_seal_rows_c_equals_python(
    alg: int, prefix: int, src: bytes, stride: int, count: int, length: int, last: int, slot: int, nonce: int
) -> None:
    key = bytes(range(KEY_LEN[alg]))
    args = (prefix, src, stride, count, length, last, slot, nonce >> 64, nonce & (2**64 - 1))
    c = _outcome(lambda: C.Aead(alg, key).seal_rows(*args))  # type: ignore[union-attr]
    p = _outcome(lambda: PY.Aead(alg, key).seal_rows(*args))
    assert c == p


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alg=st.sampled_from([1, 2, 3]),
    seg=st.integers(20, 120),
    plains=st.lists(st.binary(max_size=100), max_size=6),
    garbage=st.binary(max_size=200),
    flips=st.lists(st.integers(0, 10_000), max_size=4),
    cut=st.integers(0, 50),
    floors=st.tuples(*[st.integers(0, 2**56 + 5)] * 4),
    slots=st.lists(st.integers(0, 5), min_size=6, max_size=6),
)
def test_open_train_c_equals_python(
    alg: int,
    seg: int,
    plains: list[bytes],
    garbage: bytes,
    flips: list[int],
    cut: int,
    floors: tuple[int, int, int, int],
    slots: list[int],
) -> None:
    """Real frames, then bit flips (bad tags), foreign slot ids, a truncated tail and garbage."""
    key = bytes(range(KEY_LEN[alg]))
    ref = _reference(alg, key)
    body = seg - 24
    frames = [
        _frame(ref, slots[i] & 0xFF, (HALF << 88) | (i * 7919), p[:body].ljust(body, b"\x00"))
        for i, p in enumerate(plains)
    ]
    data = bytearray(b"".join(frames) + garbage)
    for f in flips:
        if data:
            data[f % len(data)] ^= 0x40
    data = data[: max(1, len(data) - cut)] if data else bytearray(b"\x00")
    other = bytes(KEY_LEN[alg])

    def run(k: ModuleType) -> tuple[str, Any]:
        keys = (k.Aead(alg, key), k.Aead(alg, other), k.Aead(alg, key), k.Aead(alg, key))
        return _outcome(lambda: k.open_train(keys, floors, HALF, bytes(data), seg))

    assert run(C) == run(PY)  # type: ignore[arg-type]


def test_micro_benchmark_runs_both_kernels() -> None:
    """bench/dataplane.py --micro: one round gives a row per algorithm and step for each kernel
    (the figures themselves are for the benchmark, not for a test)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench" / "dataplane.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--micro", "1"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith(("| AES256", "| CHACHA20"))]
    assert len(rows) == 10  # segment, seal, open, coalesce and their total, per algorithm
    cells = 5 if C is not None else 4
    assert all(len(row.strip("|").split("|")) == cells for row in rows), out


#: Arguments of tcp_rows, fitting or not: packet, prefix, iphl, hl beyond iphl + 20, mss, ipv4,
#: ip_id, ip_base, tcp_base, seq0, flags.
TCP_ROWS_ARGS = st.tuples(
    st.binary(max_size=700),
    st.binary(max_size=20),
    st.sampled_from([0, 19, 20, 24, 40, 60]),
    st.integers(-2, 44),
    st.integers(-1, 300),
    st.booleans(),
    st.integers(-1, 0x10000),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    st.tuples(*[st.integers(-1, 256)] * 3),
)


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TCP_ROWS_ARGS)
def test_tcp_rows_c_equals_python(drawn: tuple[Any, ...]) -> None:
    """The C segmentation against the numpy twin, also for layouts that do not fit (both refuse)."""
    packet, prefix, iphl, extra, *rest = drawn
    args = (packet, prefix, iphl, iphl + 20 + extra, *rest)
    assert _outcome(lambda: C.tcp_rows(*args)) == _outcome(lambda: PY.tcp_rows(*args))  # type: ignore[union-attr]


def test_the_python_twin_runs_when_asked_or_when_c_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """VPNCLOUD_PURE_PYTHON=1 picks the twin; so does an install that could not build the C file."""
    import importlib.util

    monkeypatch.setenv("VPNCLOUD_PURE_PYTHON", "1")
    assert fastpath._load() == (PY, "VPNCLOUD_PURE_PYTHON is set")
    monkeypatch.setenv("VPNCLOUD_PURE_PYTHON", "")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.endswith("_kernels") else real(name, *a)
    )
    impl, reason = fastpath._load()
    assert impl is PY
    assert "not built" in reason


# --- coalesce_rows: the GRO merge of a decrypted train -------------------------------------------


def _merged(call: Any) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except ValueError as err:
        return ("error", type(err).__name__)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("tail", [0, 7])
def test_coalesce_rows_merges_a_train(kernels: ModuleType, v6: bool, tail: int) -> None:
    """44 segments of one flow and the short PSH one that ends it: one GSO write with the first
    segment's headers, the merged lengths, the pseudo-header sum, all payloads in order."""
    from vpncloud.fastpath import gro

    packets = train_rows(v6, 45, 1300, tail, b"\x01\x01\x04\x02", 0xFFFFF000, True)
    buf, stride, lengths = layout(packets, 3)
    merged = kernels.coalesce_rows(buf, stride, lengths)
    assert merged is not None
    write, taken = merged
    iphl = 40 if v6 else 20
    hl = iphl + 24
    total = hl + sum(len(p) - hl for p in packets)
    payloads = [bytes(p[hl:]) for p in packets]
    assert taken == 45
    assert write == gro.gso_write(bytes(packets[0]), iphl, hl, v6, 1300, 0x18, total, payloads)
    # the PSH segment at the start ends nothing: it is never merged, nor are fewer than 4 rows
    packets[0][iphl + 13] = 0x18
    assert kernels.coalesce_rows(*layout(packets, 0)) is None
    assert kernels.coalesce_rows(*layout(packets[1:4], 0)) is None


@pytest.mark.parametrize(
    "lengths",
    [[], [-1, 5], [9, 9, 9], [9, 10], [2**63, 1]],
    ids=["none", "negative", "beyond", "stride", "huge"],
)
def test_coalesce_rows_refuses_rows_that_do_not_fit(kernels: ModuleType, lengths: list[int]) -> None:
    with pytest.raises(kernels.KernelError):
        kernels.coalesce_rows(bytes(20), 10, lengths)


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v6=st.booleans(),
    count=st.integers(1, 70),
    mss=st.sampled_from([1, 8, 99, 1300]),
    tail=st.integers(0, 20),
    options=st.sampled_from([b"", b"\x01\x01\x04\x02", b"\x01\x01\x08\x0a" + bytes(8)]),
    seq=st.integers(0, 2**32 - 1),
    psh_last=st.booleans(),
    twists=st.lists(st.tuples(st.sampled_from(TWISTS), st.integers(0, 69), st.integers(0, 255)), max_size=4),
    extra=st.integers(0, 4),
)
def test_coalesce_rows_c_equals_python(
    v6: bool,
    count: int,
    mss: int,
    tail: int,
    options: bytes,
    seq: int,
    psh_last: bool,
    twists: list[tuple[str, int, int]],
    extra: int,
) -> None:
    """Trains of one flow, then broken: wrong lengths, IPv4 options, flags, out-of-order
    sequence numbers, mixed flows, stray header bytes. The C merge equals the numpy twin's."""
    packets = train_rows(v6, count, mss, min(tail, mss - 1), options, seq, psh_last)
    for kind, at, value in twists:
        twist(packets, v6, kind, at, value)
    buf, stride, lengths = layout(packets, extra)
    c = _merged(lambda: C.coalesce_rows(buf, stride, lengths))  # type: ignore[union-attr]
    assert c == _merged(lambda: PY.coalesce_rows(buf, stride, lengths))


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    buf=st.binary(max_size=400),
    stride=st.integers(-1, 120),
    lengths=st.lists(st.integers(-2, 130), max_size=8),
)
def test_coalesce_rows_random_rows_c_equals_python(buf: bytes, stride: int, lengths: list[int]) -> None:
    """Arbitrary bytes and layouts, fitting or not: both twins refuse or decide alike."""
    c = _merged(lambda: C.coalesce_rows(buf, stride, lengths))  # type: ignore[union-attr]
    assert c == _merged(lambda: PY.coalesce_rows(buf, stride, lengths))
