"""Errors raised by the protocol core.

Every decoder raises :class:`DecodeError` (and nothing else) on malformed input, so callers can drop a
bad datagram with one ``except`` clause. Crypto failures are separate because they are counted and
logged differently by the original (``Crypto error: ...``).
"""

from __future__ import annotations


class VpnCloudError(Exception):
    """Base class of every error the core raises on purpose."""


class DecodeError(VpnCloudError, ValueError):
    """Bytes or text that do not decode (truncated, too long, bad characters...)."""


class CryptoError(VpnCloudError):
    """A message that fails authentication: bad tag, old nonce, untrusted key, bad signature."""


class ReplayError(CryptoError):
    """A session frame whose nonce is behind the replay window (a replayed or very late datagram)."""


class SignatureError(CryptoError):
    """A handshake message whose signature does not verify with the trusted key it names.

    The check is a pure function of the datagram's bytes and the trusted keys, so the same bytes fail
    again: the guard remembers them (``HandshakeGuard.record_bad_signature``).
    """


class InitError(CryptoError):
    """A recoverable handshake error: the datagram is dropped, the handshake goes on."""


class InitFatal(CryptoError):
    """A fatal handshake error: the handshake instance is discarded."""


class ConfigError(VpnCloudError):
    """Invalid configuration (keys, addresses, names) detected by the core."""
