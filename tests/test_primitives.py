"""Primitives (spec 5, 6.6, 7.5, 26): algorithms, AEAD wrappers, Ed25519, X25519, PBKDF2."""

from __future__ import annotations

import math
import random

import pytest

from vpncloud.core.errors import ConfigError, CryptoError
from vpncloud.core.primitives import (
    DEFAULT_ALGORITHMS,
    Aead,
    Algorithm,
    SystemRng,
    X25519Key,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    parse_algorithm,
    pbkdf2_seed,
    x25519_shared,
)
from vpncloud.crypto_speed import measure_speeds

# core.primitives on the C kernels and on their Python twin (cryptography): each test on both
pytestmark = pytest.mark.usefixtures("crypto_kernels")

AEADS = [Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20]


@pytest.mark.parametrize(
    ("alg", "key_len", "display"),
    [
        (Algorithm.PLAIN, 0, "PLAIN"),
        (Algorithm.AES128, 16, "AES128"),
        (Algorithm.AES256, 32, "AES256"),
        (Algorithm.CHACHA20, 32, "CHACHA20"),
    ],
)
def test_algorithm_properties(alg: Algorithm, key_len: int, display: str) -> None:
    assert alg.key_len == key_len
    assert alg.display == display


def test_algorithm_wire_ids_and_default_order() -> None:
    assert [int(a) for a in Algorithm] == [0, 1, 2, 3]
    assert DEFAULT_ALGORITHMS == (Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20)


@pytest.mark.parametrize(
    ("names", "alg"),
    [
        (["UNENCRYPTED", "none", "Plain"], Algorithm.PLAIN),
        (["AES128", "aes128_gcm", "AES_128", "aes_128_gcm"], Algorithm.AES128),
        (["AES256", "aes256_gcm", "AES_256", "Aes_256_Gcm"], Algorithm.AES256),
        (["CHACHA", "chacha20", "CHACHA20_POLY1305"], Algorithm.CHACHA20),
    ],
)
def test_parse_algorithm_names(names: list[str], alg: Algorithm) -> None:
    for name in names:
        assert parse_algorithm(name) is alg


@pytest.mark.parametrize("name", ["", "aes", "AES512", "chacha21", "rot13"])
def test_parse_algorithm_unknown(name: str) -> None:
    with pytest.raises(ConfigError, match="Unknown crypto method"):
        parse_algorithm(name)


@pytest.mark.parametrize("alg", AEADS)
def test_aead_roundtrip_and_tamper(alg: Algorithm) -> None:
    rng = random.Random(7)
    key = rng.randbytes(alg.key_len)
    nonce = rng.randbytes(12)
    aead = Aead(alg, key)
    ct = aead.seal(nonce, b"hello world")
    assert len(ct) == 11 + 16
    assert Aead(alg, key).open(nonce, ct) == b"hello world"
    with pytest.raises(CryptoError):
        aead.open(nonce, bytes([ct[0] ^ 1]) + ct[1:])
    with pytest.raises(CryptoError):
        aead.open(bytes([nonce[0] ^ 1]) + nonce[1:], ct)
    with pytest.raises(CryptoError):
        Aead(alg, bytes(alg.key_len)).open(nonce, ct)


def test_aead_rejects_wrong_key_length_and_plain() -> None:
    with pytest.raises(ValueError):
        Aead(Algorithm.AES128, bytes(32))
    with pytest.raises(ValueError):
        Aead(Algorithm.PLAIN, b"")


def test_pbkdf2_and_ed25519_vector_test() -> None:
    # spec 22.3 row "test"
    seed = pbkdf2_seed("test")
    assert seed.hex() == "67d20409c97fb9cc56119343f183c0047b47f22251a8a04bd8936ad85bb8e24d"
    pub = ed25519_public_key(seed)
    assert pub.hex() == "6b36b29a19d4408c1aa5f8c146c15f1b91d1ede28ace5aec7387b7954c7c7ab3"
    sig = ed25519_sign(seed, b"data")
    assert len(sig) == 64
    assert ed25519_sign(seed, b"data") == sig  # deterministic
    assert ed25519_verify(pub, sig, b"data")
    assert not ed25519_verify(pub, sig, b"datA")
    assert not ed25519_verify(pub, sig[:-1] + bytes([sig[-1] ^ 1]), b"data")
    assert not ed25519_verify(b"short", sig, b"data")


def test_x25519_exchange_agrees_and_truncates() -> None:
    rng = random.Random(3)
    a, b = X25519Key.generate(rng), X25519Key.generate(rng)
    shared = a.exchange(b.public)
    assert shared == b.exchange(a.public)
    assert len(shared) == 32
    assert x25519_shared(a, b.public, Algorithm.AES128) == shared[:16]
    assert x25519_shared(a, b.public, Algorithm.CHACHA20) == shared
    assert "public" in repr(a)


@pytest.mark.parametrize("bad", [bytes(32), (1).to_bytes(32, "little"), b"\x01" * 31, b""])
def test_x25519_bad_peer_key_is_crypto_error(bad: bytes) -> None:
    # all-zero / small order points give an all-zero secret; wrong lengths are invalid (quirk 7)
    with pytest.raises(CryptoError):
        X25519Key.generate(random.Random(1)).exchange(bad)


def test_system_rng() -> None:
    rng = SystemRng()
    assert len(rng.randbytes(16)) == 16
    assert rng.randbytes(16) != rng.randbytes(16)


def test_measure_speeds_sanity() -> None:
    # spec 22.4: each algorithm > 10 MB/s; plain is advertised as +inf (23.2)
    speeds = measure_speeds([Algorithm.PLAIN, *AEADS], duration=0.02)
    assert math.isinf(speeds[Algorithm.PLAIN])
    for alg in AEADS:
        assert speeds[alg] > 10.0
