"""Key rotation: the ROTATION message and the per-peer rotation state (spec section 8).

Theory of operation
-------------------
Each side runs a *cycle* every 120 ticks (the counter lives in ``PeerCrypto``). The rotation
initiator (the handshake responder) proposes a fresh X25519 public key with message id 1 right away.
The other side answers a proposal in its next cycle with an even id that both *confirms* the proposal
(carrying its own fresh public key, so both derive X25519(a, B) = X25519(b, A)) and proposes a new
key. Keys derived in an own cycle are installed for receiving only; a key derived from a received
confirmation is installed *and* used for sending, so a side only switches once it knows the peer can
decrypt with the new key. Ids: initiator odd, other side even; the slot is ``id mod 4``.

The state object is sans-I/O: it returns messages to send and keys to install, ``PeerCrypto``
encrypts/sends the former and feeds the latter to ``CryptoCore.rotate``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CryptoError, DecodeError
from .primitives import Algorithm, Rng, X25519Key

__all__ = ["KeyInstall", "RotationMessage", "RotationState"]

_KEY_LEN = 32


@dataclass(frozen=True, slots=True)
class RotationMessage:
    """ROTATION body: ``u64 id``, ``u8 len`` + proposed key, ``u8 len`` + optional confirmation."""

    message_id: int
    propose: bytes
    confirm: bytes | None = None

    def encode(self) -> bytes:
        """42 bytes without, 74 bytes with a confirmation."""
        out = struct.pack(">QB", self.message_id, len(self.propose)) + self.propose
        if self.confirm is None:
            return out + b"\x00"
        return out + bytes((len(self.confirm),)) + self.confirm

    @classmethod
    def decode(cls, data: bytes) -> RotationMessage:
        """Parse, bounded by ``len(data)`` (the original reads stale buffer bytes, quirk 20).

        Key lengths other than 32 (or 0 for the confirmation) are rejected here because the
        original would panic on them in X25519.
        """
        if len(data) < 10:
            raise DecodeError("Rotation message too short")
        message_id, l1 = struct.unpack_from(">QB", data, 0)
        if l1 != _KEY_LEN:
            raise DecodeError("Rotation message: invalid proposed key length")
        pos = 9 + l1
        if len(data) < pos + 1:
            raise DecodeError("Rotation message too short")
        propose = bytes(data[9:pos])
        l2 = data[pos]
        if l2 == 0:
            return cls(message_id, propose, None)
        if l2 != _KEY_LEN:
            raise DecodeError("Rotation message: invalid confirmation key length")
        end = pos + 1 + l2
        if len(data) < end:
            raise DecodeError("Rotation message too short")
        return cls(message_id, propose, bytes(data[pos + 1 : end]))


@dataclass(frozen=True, slots=True)
class KeyInstall:
    """Put ``key`` into slot ``message_id mod 4``; ``send`` = also switch sending to it."""

    key: bytes
    message_id: int
    send: bool


class RotationState:
    """Rotation state of one peer (spec 8.2/8.3), exactly as the original's ``RotationState``."""

    __slots__ = ("_alg", "_rng", "confirmed", "message_id", "pending", "proposed", "timeout")

    def __init__(self, initiator: bool, algorithm: Algorithm, rng: Rng) -> None:
        self._alg = algorithm
        self._rng = rng
        self.proposed: X25519Key | None = None
        self.pending: tuple[bytes, bytes] | None = None  # (derived key, own reply public key)
        self.confirmed: tuple[bytes, int] | None = None  # (confirmation public key sent, its id)
        self.message_id = 1 if initiator else 0
        self.timeout = False
        if initiator:
            self.proposed = X25519Key.generate(rng)

    def initial_message(self) -> RotationMessage | None:
        """Message id 1 the initiator sends right after the handshake (None for the other side)."""
        if self.message_id == 1 and self.proposed is not None and self.confirmed is None:
            return RotationMessage(1, self.proposed.public, None)
        return None

    def _derive(self, key: X25519Key, peer_public: bytes) -> bytes:
        try:
            return key.exchange(peer_public)[: self._alg.key_len]
        except CryptoError:
            raise CryptoError("Invalid rotation key") from None

    def handle_message(self, msg: RotationMessage) -> KeyInstall | None:
        """Process a peer's message; may return a key to install and switch to."""
        if msg.message_id <= self.message_id:
            return None  # duplicate or reflected own message
        fresh = X25519Key.generate(self._rng)
        pending_key = self._derive(fresh, msg.propose)
        install = None
        if msg.confirm is not None and self.proposed is not None:
            install = KeyInstall(self._derive(self.proposed, msg.confirm), msg.message_id, True)
            self.proposed = None
        # Only assign after both derivations succeeded, so a bad key leaves the state untouched.
        self.timeout = False
        self.pending = (pending_key, fresh.public)
        return install

    def cycle(self) -> tuple[RotationMessage | None, KeyInstall | None]:
        """One rotation cycle (every 120 ticks): message to send and key to install (receive-only)."""
        if self.proposed is not None:
            if not self.timeout:
                self.timeout = True
                return None, None
            if self.confirmed is not None:
                confirm_key, confirm_id = self.confirmed
                return RotationMessage(confirm_id, self.proposed.public, confirm_key), None
            return RotationMessage(1, self.proposed.public, None), None
        if self.pending is not None:
            key, reply_public = self.pending
            self.pending = None
            self.message_id += 2
            self.proposed = X25519Key.generate(self._rng)
            self.confirmed = (reply_public, self.message_id)
            msg = RotationMessage(self.message_id, self.proposed.public, reply_public)
            return msg, KeyInstall(key, self.message_id, False)
        return None, None
