"""Session crypto core: 4 key slots, nonces and the replay window (spec section 7).

Frame layout (spec 4.3)::

    [slot id][nonce bytes 5..11][AEAD(ciphertext of type+payload)][16-byte tag]

Nonces are 12-byte big-endian counters. They are kept as Python ``int`` internally because
incrementing and comparing ints is much cheaper than doing it on bytes. The most significant byte
is the "half" byte (0x80 or 0x00) so the two peers never use the same nonce with one key; the
receiver rebuilds the peer's nonce with the opposite half byte and zero bytes 1..4.
"""

from __future__ import annotations

import struct
from types import ModuleType

from vpncloud.fastpath.rows import PacketRows, Train

from .. import fastpath
from .errors import CryptoError, ReplayError
from .primitives import TAG_LEN, Aead, Algorithm, Rng

__all__ = ["EXTRA_LEN", "FRAME_OVERHEAD", "NUM_SLOTS", "CryptoCore", "increment_nonce"]

EXTRA_LEN = 8
NUM_SLOTS = 4
_HALF = 0x80 << 88
_MIN_FRAME = EXTRA_LEN + TAG_LEN
#: Bytes a session frame adds to its plaintext (header + tag).
FRAME_OVERHEAD = EXTRA_LEN + TAG_LEN
_HEADER = struct.Struct(">Q")
_LOW56 = (1 << 56) - 1
_LOW64 = (1 << 64) - 1
#: Frames from this size on are decrypted through a view (below it, the copy costs less than the view).
_VIEW_FROM = 4096


def increment_nonce(nonce: bytes) -> bytes:
    """The 12-byte nonce plus one, big-endian with carry (spec 7.2 test helper)."""
    return ((int.from_bytes(nonce, "big") + 1) % (1 << 96)).to_bytes(12, "big")


#: A frame more than this many nonces behind the newest one is taken for a replay (WireGuard keeps
#: 8,128); and at most this many missing nonces inside that window are remembered.
REPLAY_WINDOW = 8192
_MAX_HOLES = 1024
_FIRST_HOLES = 64


class _Slot:
    """One key with its own send counter and receive window."""

    __slots__ = ("aead", "holes", "kernel", "min_nonce", "next_min_nonce", "nonce", "seen_nonce")

    def __init__(self, aead: Aead, kernel: fastpath.Aead, nonce: int) -> None:
        self.aead = aead
        # the same key for the buffer kernels (rows and trains), with its own reused contexts
        self.kernel = kernel
        self.nonce = nonce  # last send nonce used; incremented before each use
        self.min_nonce = 0
        self.next_min_nonce = 0
        self.seen_nonce = 0
        # The original only has the 1-2 tick window (min_nonce), so a duplicate captured within a
        # tick reached the device (quirk 16). We remember the nonces *not* received behind the
        # newest one instead of those received: in-order traffic (nearly all of it) then costs
        # one comparison, and a frame behind the newest is accepted once, if it is such a hole.
        # Receiving side only: the wire does not change.
        self.holes: set[int] = set()

    def fresh(self, nonce: int) -> bool:
        """Whether ``nonce`` may be accepted: ahead of the newest, or a hole inside the window."""
        top = self.seen_nonce
        if nonce > top:
            return True
        return nonce >= self.min_nonce and top - nonce < REPLAY_WINDOW and nonce in self.holes

    def mark(self, nonce: int) -> None:
        """Record an authenticated ``nonce`` (only after the tag checked: forgeries mark nothing)."""
        top = self.seen_nonce
        if nonce <= top:
            self.holes.discard(nonce)
            return
        self.seen_nonce = nonce
        if nonce - top == 1:
            return
        holes = self.holes
        if nonce - top > REPLAY_WINDOW:
            holes.clear()
            if top == 0:
                # the first frame of a key: the few sent just before it may still be on their way
                holes.update(range(nonce - _FIRST_HOLES, nonce))
            return
        holes.update(range(top + 1, nonce))
        if len(holes) > _MAX_HOLES:
            floor = nonce - REPLAY_WINDOW
            kept = sorted(h for h in holes if h > floor)[-_MAX_HOLES:]
            holes.clear()
            holes.update(kept)


class CryptoCore:
    """Encrypts and decrypts session frames for one peer.

    ``half`` is ``own salted node-id hash > peer's`` (spec 7.2).
    """

    __slots__ = ("_half", "_kernels", "_peer_half", "_rng", "_send", "_send_id", "_slots", "algorithm")

    def __init__(
        self, alg: Algorithm, key: bytes, half: bool, rng: Rng, kernels: ModuleType | None = None
    ) -> None:
        self.algorithm = alg
        # the buffer kernels: the ones chosen at import unless a benchmark or test names others
        self._kernels = fastpath if kernels is None else kernels
        self._rng = rng
        self._half = _HALF if half else 0
        self._peer_half = 0 if half else _HALF
        # Slots 1..3 share one random dummy key, so frames naming them just fail to decrypt.
        dummy = rng.randbytes(alg.key_len)
        self._slots = [self._new_slot(key)] + [self._new_slot(dummy) for _ in range(3)]
        self._send_id = 0
        self._send = self._slots[0]

    def _new_slot(self, key: bytes) -> _Slot:
        # bytes 1..5 zero, bytes 6..11 random start (spec 7.2)
        nonce = self._half | int.from_bytes(self._rng.randbytes(6), "big")
        return _Slot(Aead(self.algorithm, key), self._kernels.Aead(self.algorithm, key), nonce)

    @property
    def send_slot(self) -> int:
        """Id of the slot currently used for sending."""
        return self._send_id

    def encrypt(self, plaintext: bytes) -> bytes:
        """Whole frame for ``plaintext`` (type byte + payload, or a bare handshake payload)."""
        slot = self._send
        slot.nonce += 1
        nonce = slot.nonce.to_bytes(12, "big")
        return bytes((self._send_id,)) + nonce[5:] + slot.aead.seal(nonce, plaintext)

    def encrypt_many(self, prefix: bytes, payloads: list[bytes]) -> list[bytes]:
        """Frames for ``prefix + payload`` of each payload (the same as ``encrypt`` one by one)."""
        slot = self._send
        seal = slot.aead.seal
        sid = bytes((self._send_id,))
        nonce = slot.nonce
        out = []
        for payload in payloads:
            nonce += 1
            nb = nonce.to_bytes(12, "big")
            out.append(sid + nb[5:] + seal(nb, prefix + payload))
        slot.nonce = nonce
        return out

    def encrypt_rows(self, prefix: int, rows: PacketRows) -> Train:
        """Frames for ``prefix byte + packet`` of every row, back to back in one buffer: the same
        bytes as ``encrypt_many`` gives, without a copy per packet. The rows must all have the same
        length except a shorter last one (the segments of one super-packet)."""
        lengths = rows.lengths
        n = len(lengths)
        length = lengths[0]
        slot = self._send
        first = slot.nonce + 1
        out = slot.kernel.seal_rows(
            prefix, rows.buf, rows.stride, n, length, lengths[-1], self._send_id, first >> 64, first & _LOW64
        )
        slot.nonce += n
        return Train(out, length + 1 + FRAME_OVERHEAD, n)

    def decrypt(self, frame: bytes | memoryview) -> bytes:
        """Plaintext of a frame; raises ``CryptoError`` (too short, old nonce, bad tag)."""
        if len(frame) < _MIN_FRAME:
            # The original asserts here and crashes (quirk 6); we reject cleanly.
            raise CryptoError("Message too short")
        slot = self._slots[frame[0] & 3]
        nonce = self._peer_half | int.from_bytes(frame[1:8], "big")
        if nonce <= slot.seen_nonce and not slot.fresh(nonce):
            raise ReplayError("Old nonce rejected" if nonce < slot.min_nonce else "Duplicate nonce rejected")
        # a super-packet frame is 64 KB: slicing bytes would copy it once more before the AEAD
        body = frame[8:] if len(frame) < _VIEW_FROM else memoryview(frame)[8:]
        plaintext = slot.aead.open(nonce.to_bytes(12, "big"), body)
        slot.mark(nonce)
        return plaintext

    def decrypt_many(self, frames: list[bytes]) -> list[bytes | None]:
        """``decrypt`` for each frame, with None instead of an exception for a frame that fails."""
        out: list[bytes | None] = []
        append = out.append
        peer_half = self._peer_half
        slots = self._slots
        for frame in frames:
            if len(frame) < _MIN_FRAME:
                append(None)
                continue
            slot = slots[frame[0] & 3]
            nonce = peer_half | int.from_bytes(frame[1:8], "big")
            if nonce <= slot.seen_nonce and not slot.fresh(nonce):
                append(None)
                continue
            try:
                plain = slot.aead.open(nonce.to_bytes(12, "big"), frame[8:])
            except CryptoError:
                append(None)
                continue
            if nonce - slot.seen_nonce == 1:
                slot.seen_nonce = nonce  # in order: mark() without the call
            else:
                slot.mark(nonce)
            append(plain)
        return out

    def decrypt_train(self, data: bytes, seg: int) -> tuple[bytearray, list[int]]:
        """``decrypt`` for each ``seg``-byte frame of ``data`` (the last may be shorter), straight
        into rows of ``seg - 24`` bytes of one buffer. Returns the buffer and each plaintext's
        length, -1 for a frame that fails (too short, old nonce, bad tag, slice or handshake)."""
        slots = self._slots
        peer_half = self._peer_half
        # the kernel compares the 56 bits of the header: a window floor below the peer's half
        # byte lets every nonce through, as the full comparison would
        floors = tuple(min(max(s.min_nonce - peer_half, 0), _LOW64) for s in slots)
        rows: bytearray
        lengths: list[int]
        rows, lengths = self._kernels.open_train(
            (slots[0].kernel, slots[1].kernel, slots[2].kernel, slots[3].kernel),
            (floors[0], floors[1], floors[2], floors[3]),
            peer_half >> 88,
            data,
            seg,
        )
        # The replay window stays here, out of the kernel: frames that passed their tag are checked
        # and marked in order, so a duplicate inside the train or of an earlier one is refused.
        header = _HEADER.unpack_from
        for i, size in enumerate(lengths):
            if size < 0:
                continue
            head = header(data, i * seg)[0]
            slot = slots[head >> 56]
            nonce = peer_half | (head & _LOW56)
            if nonce - slot.seen_nonce == 1:
                slot.seen_nonce = nonce  # in order: mark() without the call
            elif slot.fresh(nonce):
                slot.mark(nonce)
            else:
                lengths[i] = -1
        return rows, lengths

    def rotate(self, key: bytes, slot_id: int, use_for_sending: bool) -> None:
        """Install ``key`` in slot ``slot_id mod 4`` with fresh nonce state; maybe send with it."""
        slot_id &= 3
        slot = self._new_slot(key)
        self._slots[slot_id] = slot
        if use_for_sending:
            self._send_id = slot_id
            self._send = slot
        elif slot_id == self._send_id:
            # Replacing the sending slot without switching keeps it the sending slot.
            self._send = slot

    def every_tick(self) -> None:
        """Roll the replay window of every slot (spec 7.4)."""
        for slot in self._slots:
            slot.min_nonce = slot.next_min_nonce
            slot.next_min_nonce = slot.seen_nonce + 1
