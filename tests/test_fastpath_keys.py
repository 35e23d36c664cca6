"""The handshake's Ed25519 and X25519 and the single-packet AEAD in the kernels (issue 21): RFC 8032
and RFC 7748 vectors on the C kernels and on their Python twin, and differential tests that compare
them byte for byte on random and malformed input (wrong lengths, bad points, bad signatures)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from conftest import NO_C, c_kernels
from curve_points import SMALL_ORDER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpncloud import fastpath

C = c_kernels()
PY = fastpath.implementation("python")
needs_c = pytest.mark.skipif(C is None, reason=NO_C)

# RFC 8032 section 7.1, TEST 1, 2, 3 and SHA(abc): secret key, public key, message, signature
ED25519 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
        "387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
        "4a7c15e9716ed28dc027beceea1ec40a",
    ),
]

# RFC 7748 section 5.2: scalar, u-coordinate, output (the second u has its top bit set: masked)
X25519 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
# RFC 7748 section 6.1: Alice's and Bob's private and public keys and their shared secret
ALICE = (
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
)
BOB = (
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
)
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


@pytest.mark.parametrize(("secret", "public", "message", "signature"), ED25519)
def test_ed25519_rfc8032(kernels: ModuleType, secret: str, public: str, message: str, signature: str) -> None:
    seed, pub, msg, sig = (bytes.fromhex(x) for x in (secret, public, message, signature))
    key = kernels.Ed25519(seed)
    assert key.public == pub
    assert key.sign(msg) == key.sign(memoryview(msg)) == sig
    assert kernels.ed25519_verify(pub, sig, msg) is True
    # any change of message, signature or key, and wrong lengths, give False, not an exception
    assert kernels.ed25519_verify(pub, sig, msg + b"x") is False
    assert kernels.ed25519_verify(pub, bytes([sig[0] ^ 1]) + sig[1:], msg) is False
    assert kernels.ed25519_verify(bytes([pub[0] ^ 1]) + pub[1:], sig, msg) is False
    assert kernels.ed25519_verify(pub[:31], sig, msg) is False
    assert kernels.ed25519_verify(pub, sig + b"\0", msg) is False
    assert kernels.ed25519_verify(bytes(32), bytes(64), msg) is False


@pytest.mark.parametrize(("scalar", "u", "out"), X25519)
def test_x25519_rfc7748(kernels: ModuleType, scalar: str, u: str, out: str) -> None:
    assert kernels.X25519(bytes.fromhex(scalar)).exchange(bytes.fromhex(u)) == bytes.fromhex(out)


def test_x25519_rfc7748_iterated_and_diffie_hellman(kernels: ModuleType) -> None:
    k = u = (9).to_bytes(32, "little")
    for i in range(1000):
        k, u = kernels.X25519(k).exchange(u), k
        if i == 0:
            assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
    (a_priv, a_pub), (b_priv, b_pub) = ((bytes.fromhex(x) for x in key) for key in (ALICE, BOB))
    alice, bob = kernels.X25519(a_priv), kernels.X25519(b_priv)
    assert alice.public == a_pub and bob.public == b_pub
    assert alice.exchange(b_pub) == bob.exchange(a_pub) == bytes.fromhex(SHARED)


@pytest.mark.parametrize("point", SMALL_ORDER)
def test_x25519_small_order_point_gives_none(kernels: ModuleType, point: bytes) -> None:
    assert kernels.X25519(bytes(range(32))).exchange(point) is None


def test_wrong_key_lengths_are_kernel_errors(kernels: ModuleType) -> None:
    for call in (
        lambda: kernels.Ed25519(bytes(31)),
        lambda: kernels.Ed25519(bytes(33)),
        lambda: kernels.X25519(b""),
        lambda: kernels.X25519(bytes(33)),
        lambda: kernels.X25519(bytes(32)).exchange(bytes(31)),
        lambda: kernels.Aead(1, bytes(16)).open(bytes(11), bytes(16)),
    ):
        with pytest.raises(kernels.KernelError):
            call()


@pytest.mark.parametrize("alg", [1, 2, 3])
def test_aead_open_returns_none_for_what_does_not_authenticate(kernels: ModuleType, alg: int) -> None:
    key = bytes(range(16 if alg == 1 else 32))
    aead = kernels.Aead(alg, key)
    nonce = bytes(range(12))
    body = aead.seal(nonce, b"type byte and payload")
    assert aead.open(nonce, body) == aead.open(nonce, memoryview(body)) == b"type byte and payload"
    assert aead.open(nonce, aead.seal(nonce, b"")) == b""
    assert aead.open(nonce, bytes([body[0] ^ 1]) + body[1:]) is None
    assert aead.open(bytes(12), body) is None
    assert kernels.Aead(alg, bytes(len(key))).open(nonce, body) is None
    assert aead.open(nonce, body[:15]) is None  # no room for a tag


# --- differential: C against Python, byte for byte ---------------------------------------------


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        result = call()
    except ValueError as err:
        return ("error", type(err).__name__)
    return ("ok", result if result is None or isinstance(result, bool) else bytes(result))


KEYISH = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_c
@SLOW
@given(seed=KEYISH, msg=st.binary(max_size=300))
def test_ed25519_public_and_sign_c_equals_python(seed: bytes, msg: bytes) -> None:
    assert C is not None
    c = _outcome(lambda: C.Ed25519(seed).public)
    assert c == _outcome(lambda: PY.Ed25519(seed).public)
    if c[0] == "ok":
        assert C.Ed25519(seed).sign(msg) == PY.Ed25519(seed).sign(msg)


@needs_c
@SLOW
@given(
    seed=st.binary(min_size=32, max_size=32),
    msg=st.binary(max_size=300),
    pub_flip=st.integers(-1, 255),
    sig_flip=st.integers(-1, 511),
    msg_flip=st.integers(-1, 2400),
    junk=st.tuples(KEYISH, st.binary(max_size=70)),
)
def test_ed25519_verify_c_equals_python(
    seed: bytes, msg: bytes, pub_flip: int, sig_flip: int, msg_flip: int, junk: tuple[bytes, bytes]
) -> None:
    """A valid signature, with a bit of key, signature or message flipped (-1: none); and junk."""
    assert C is not None

    def flipped(data: bytes, bit: int) -> bytes:
        if not 0 <= bit < 8 * len(data):
            return data
        out = bytearray(data)
        out[bit // 8] ^= 1 << bit % 8
        return bytes(out)

    key = C.Ed25519(seed)
    pub, sig = key.public, key.sign(msg)
    args = (flipped(pub, pub_flip), flipped(sig, sig_flip), flipped(msg, msg_flip))
    assert C.ed25519_verify(*args) is PY.ed25519_verify(*args)
    assert C.ed25519_verify(*args) is (args == (pub, sig, msg))
    assert C.ed25519_verify(*junk, msg) is PY.ed25519_verify(*junk, msg)


@needs_c
@SLOW
@given(private=KEYISH, peer=st.one_of(KEYISH, st.sampled_from(SMALL_ORDER)))
def test_x25519_c_equals_python(private: bytes, peer: bytes) -> None:
    assert C is not None
    c = _outcome(lambda: C.X25519(private).public)
    assert c == _outcome(lambda: PY.X25519(private).public)
    if c[0] == "ok":
        key_c, key_py = C.X25519(private), PY.X25519(private)
        assert _outcome(lambda: key_c.exchange(peer)) == _outcome(lambda: key_py.exchange(peer))


@needs_c
@SLOW
@given(
    alg=st.sampled_from([1, 2, 3]),
    nonce=st.binary(min_size=11, max_size=13),
    plain=st.binary(max_size=200),
    flip=st.integers(-1, 300),
    junk=st.binary(max_size=40),
)
def test_aead_seal_and_open_c_equals_python(
    alg: int, nonce: bytes, plain: bytes, flip: int, junk: bytes
) -> None:
    assert C is not None
    key = bytes(range(16 if alg == 1 else 32))
    c, p = C.Aead(alg, key), PY.Aead(alg, key)
    sealed = _outcome(lambda: c.seal(nonce, plain))
    assert sealed == _outcome(lambda: p.seal(nonce, plain))
    body = bytearray(sealed[1] if sealed[0] == "ok" else junk)
    if 0 <= flip < len(body):
        body[flip] ^= 0x10
    assert _outcome(lambda: c.open(nonce, bytes(body))) == _outcome(lambda: p.open(nonce, bytes(body)))
    assert _outcome(lambda: c.open(nonce, junk)) == _outcome(lambda: p.open(nonce, junk))
