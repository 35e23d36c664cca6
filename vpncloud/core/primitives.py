"""Cryptographic primitives (spec sections 5, 6.6, 7.5 and 26).

The core reaches Ed25519, X25519 and the AEAD only through the small wrappers below, and they reach
them through ``vpncloud.fastpath``: OpenSSL's libcrypto straight from the C kernels, or
cryptography in their Python twin. So a daemon with the C kernels never imports cryptography (issue
21: about 8 MiB of resident memory). Nothing here reads a clock; randomness only enters through an
injected ``Rng``.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable
from typing import Protocol

from .. import fastpath
from .errors import ConfigError, CryptoError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "PBKDF2_ITERATIONS",
    "PBKDF2_SALT",
    "TAG_LEN",
    "Aead",
    "Algorithm",
    "Rng",
    "SystemRng",
    "X25519Key",
    "ed25519_key",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "parse_algorithm",
    "pbkdf2_seed",
    "sha256",
    "x25519_shared",
]

TAG_LEN = 16
PBKDF2_SALT = b"vpncloudVPNCLOUDvpncl0udVpnCloud"
PBKDF2_ITERATIONS = 4096


class Rng(Protocol):
    """Source of random bytes; ``random.Random(seed)`` fits for deterministic simulations."""

    def randbytes(self, n: int, /) -> bytes: ...


class SystemRng:
    """Cryptographically secure randomness from the operating system."""

    def randbytes(self, n: int) -> bytes:
        """Return ``n`` bytes from ``os.urandom``."""
        return os.urandom(n)


class Algorithm(enum.IntEnum):
    """Session algorithms with their wire ids (spec 6.3/7.5)."""

    PLAIN = 0
    AES128 = 1
    AES256 = 2
    CHACHA20 = 3

    @property
    def key_len(self) -> int:
        """AEAD key length in bytes (0 for PLAIN)."""
        return _KEY_LEN[self]

    @property
    def display(self) -> str:
        """Name used in the stats file."""
        return self.name


_KEY_LEN = {Algorithm.PLAIN: 0, Algorithm.AES128: 16, Algorithm.AES256: 32, Algorithm.CHACHA20: 32}

DEFAULT_ALGORITHMS = (Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20)

_ALGORITHM_NAMES = {
    "UNENCRYPTED": Algorithm.PLAIN,
    "NONE": Algorithm.PLAIN,
    "PLAIN": Algorithm.PLAIN,
    "AES128": Algorithm.AES128,
    "AES128_GCM": Algorithm.AES128,
    "AES_128": Algorithm.AES128,
    "AES_128_GCM": Algorithm.AES128,
    "AES256": Algorithm.AES256,
    "AES256_GCM": Algorithm.AES256,
    "AES_256": Algorithm.AES256,
    "AES_256_GCM": Algorithm.AES256,
    "CHACHA": Algorithm.CHACHA20,
    "CHACHA20": Algorithm.CHACHA20,
    "CHACHA20_POLY1305": Algorithm.CHACHA20,
}


def parse_algorithm(name: str) -> Algorithm:
    """Parse a config/CLI algorithm name, case-insensitively (spec 7.5)."""
    alg = _ALGORITHM_NAMES.get(name.strip().upper())
    if alg is None:
        raise ConfigError(f"Unknown crypto method: {name!r}")
    return alg


class Aead:
    """One AEAD key: ``seal``/``open`` with a 12-byte nonce and empty associated data."""

    __slots__ = ("_open", "algorithm", "seal")

    def __init__(self, alg: Algorithm, key: bytes) -> None:
        if alg is Algorithm.PLAIN:
            raise ValueError("PLAIN has no AEAD")
        if len(key) != alg.key_len:
            raise ValueError(f"{alg.name} needs a {alg.key_len}-byte key, got {len(key)}")
        impl = fastpath.Aead(alg, key)
        self.algorithm = alg
        # the kernel's bound methods: the hot path is one attribute lookup and call, no wrapper
        self.seal = impl.seal
        self._open = impl.open

    #: ``seal(nonce, plaintext)``: ciphertext followed by the 16-byte tag.
    seal: Callable[[bytes, bytes | bytearray | memoryview], bytes]

    def open(self, nonce: bytes, ct_tag: bytes | bytearray | memoryview) -> bytes:
        """Decrypt and authenticate; raises ``CryptoError`` on any failure."""
        plain = self._open(nonce, ct_tag)
        if plain is None:
            raise CryptoError("Failed to decrypt data")
        return plain


def sha256(data: bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(data).digest()


def pbkdf2_seed(password: str) -> bytes:
    """Ed25519 seed derived from a password (spec 5.1)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), PBKDF2_SALT, PBKDF2_ITERATIONS, 32)


def ed25519_key(seed: bytes) -> fastpath.Ed25519:
    """A signing key for a 32-byte seed: ``.public`` and ``.sign(data)``. Setting it up derives the
    public key, a base-point multiplication: a node keeps its key instead of a seed to sign with."""
    return fastpath.Ed25519(seed)


def ed25519_public_key(seed: bytes) -> bytes:
    """Public key of a 32-byte Ed25519 seed."""
    return fastpath.Ed25519(seed).public


def ed25519_sign(seed: bytes, data: bytes) -> bytes:
    """Deterministic Ed25519 signature (64 bytes)."""
    return fastpath.Ed25519(seed).sign(data)


def ed25519_verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``data``; never raises."""
    return fastpath.ed25519_verify(public_key, signature, data)


class X25519Key:
    """An ephemeral X25519 private key made from 32 random bytes of the injected rng."""

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes) -> None:
        self._key = fastpath.X25519(private)
        self.public: bytes = self._key.public

    @classmethod
    def generate(cls, rng: Rng) -> X25519Key:
        """New key from ``rng.randbytes(32)``."""
        return cls(rng.randbytes(32))

    def exchange(self, peer_public: bytes) -> bytes:
        """Raw 32-byte shared secret.

        Raises ``CryptoError`` for a public key of the wrong length or a small-order point (all-zero
        secret); the original panics there (quirk 7), callers turn it into a fatal handshake error.
        """
        if len(peer_public) != 32:
            raise CryptoError("Invalid X25519 public key length")
        secret = self._key.exchange(peer_public)
        if secret is None:
            raise CryptoError("X25519 key exchange failed (small order point)")
        return secret

    def __repr__(self) -> str:
        return f"X25519Key(public={self.public.hex()})"


def x25519_shared(private: X25519Key, peer_public: bytes, alg: Algorithm) -> bytes:
    """Session key: the raw X25519 secret truncated to the algorithm's key length (no KDF, spec 6.6)."""
    return private.exchange(peer_public)[: alg.key_len]
