"""The Python twin of ``_kernels.c``: the same functions, byte for byte (the tests compare them).

Runs when the extension is not built or ``VPNCLOUD_PURE_PYTHON=1``; see ``_kernels.c`` for the
frame layout and the meaning of every argument.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

TAG_LEN = 16
HEADER_LEN = 8
OVERHEAD = HEADER_LEN + TAG_LEN
NUM_SLOTS = 4
#: The same sanity bounds as the C twin, so both refuse the same calls.
MAX_CHUNK = 1 << 20
MAX_ROWS = 65536
_HEADER = struct.Struct(">Q")
_LOW56 = (1 << 56) - 1
_KEY_LEN = {1: 16, 2: 32, 3: 32}


class KernelError(ValueError):
    """A call whose arguments do not fit (lengths, layout, algorithm): a caller's bug."""


class Aead:
    """One key; the cryptography objects keep their contexts, as the C twin does."""

    __slots__ = ("_dec_into", "_decrypt", "_enc_into", "_encrypt")

    def __init__(self, alg: int, key: bytes) -> None:
        if _KEY_LEN.get(alg) != len(key):
            raise KernelError("unknown algorithm or wrong key length")
        impl = ChaCha20Poly1305(key) if alg == 3 else AESGCM(key)
        self._encrypt = impl.encrypt
        self._decrypt = impl.decrypt
        # cryptography >= 47 works into a caller's buffer; older ones get a copy
        self._enc_into = getattr(impl, "encrypt_into", None)
        self._dec_into = getattr(impl, "decrypt_into", None)

    def seal(self, nonce: bytes, data: bytes) -> bytes:
        if len(nonce) != 12 or len(data) > MAX_CHUNK:
            raise KernelError("uninitialised Aead, nonce not 12 bytes or data over 1 MiB")
        return self._encrypt(bytes(nonce), bytes(data), None)

    def seal_rows(
        self,
        prefix: int,
        src: bytes | bytearray | memoryview,
        stride: int,
        count: int,
        length: int,
        last: int,
        slot_id: int,
        nonce_hi: int,
        nonce_lo: int,
    ) -> bytes | bytearray:
        if (
            not 0 <= prefix <= 255
            or not 0 <= slot_id <= 255
            or not 1 <= count <= MAX_ROWS
            or not 0 <= length < MAX_CHUNK
            or not 0 <= last <= length
            or not length + 1 <= stride <= MAX_CHUNK
            or len(src) < stride * (count - 1) + 1 + last
            or not 0 <= nonce_hi < 1 << 32
            or not 0 <= nonce_lo < 1 << 64
        ):
            raise KernelError("rows do not fit the buffer")
        seg = length + 1 + OVERHEAD
        out = bytearray(seg * (count - 1) + last + 1 + OVERHEAD)
        ov = memoryview(out)
        view = memoryview(src)
        # the row's free byte takes the prefix (as the rows' contract allows) so that the AEAD reads
        # type + packet in one piece; a read-only buffer gets a copy per row instead
        writable = not view.readonly
        head = bytes((prefix,))
        enc_into = self._enc_into
        encrypt = self._encrypt
        nonce = nonce_hi << 64 | nonce_lo
        sid = slot_id << 56
        put = _HEADER.pack_into
        pos = 0
        for i in range(count):
            size = last if i == count - 1 else length
            start = i * stride + 1
            if writable:
                view[start - 1] = prefix
                plain = view[start - 1 : start + size]
            else:
                plain = memoryview(head + view[start : start + size])
            nb = (nonce & ((1 << 96) - 1)).to_bytes(12, "big")
            put(out, pos, sid | (nonce & _LOW56))
            end = pos + HEADER_LEN + 1 + size + TAG_LEN
            if enc_into is not None:
                enc_into(nb, plain, None, ov[pos + HEADER_LEN : end])
            else:
                ov[pos + HEADER_LEN : end] = encrypt(nb, bytes(plain), None)
            pos += seg
            nonce += 1
        return out

    def open_into(self, nonce: bytes, body: memoryview, out: memoryview) -> bool:
        """Decrypt ``body`` (ciphertext + tag) into ``out``; False when it does not authenticate."""
        try:
            if self._dec_into is not None:
                self._dec_into(nonce, body, None, out)
            else:
                out[:] = self._decrypt(nonce, bytes(body), None)
        except InvalidTag:
            # never hand out plaintext that did not authenticate (the C twin zeroes it too)
            out[:] = bytes(len(out))
            return False
        return True


def open_train(
    slots: tuple[Aead, Aead, Aead, Aead],
    floors: tuple[int, int, int, int],
    half: int,
    data: bytes | bytearray | memoryview,
    seg: int,
) -> tuple[bytearray, list[int], tuple[int, int, int, int]]:
    if (
        len(slots) != NUM_SLOTS
        or len(floors) != NUM_SLOTS
        or not 0 <= half <= 255
        or not OVERHEAD < seg <= MAX_CHUNK
        or len(data) < 1
        or (len(data) + seg - 1) // seg > MAX_ROWS
        or not all(isinstance(a, Aead) for a in slots)
        or not all(0 <= f < 1 << 64 for f in floors)
    ):
        raise KernelError("open_train: bad slots, floors, half or train layout")
    stride = seg - OVERHEAD
    total = len(data)
    n = (total + seg - 1) // seg
    rows = bytearray(stride * n)
    out = memoryview(rows)
    view = memoryview(data)
    lengths: list[int] = []
    append = lengths.append
    seen = [-1] * NUM_SLOTS
    high = bytes((half, 0, 0, 0, 0))
    for i in range(n):
        pos = i * seg
        size = min(seg, total - pos) - OVERHEAD
        if size < 0:
            append(-1)
            break
        slot = view[pos]
        if slot >= NUM_SLOTS:
            append(-1)
            continue
        low = int.from_bytes(view[pos + 1 : pos + HEADER_LEN], "big")
        if low < floors[slot] or not slots[slot].open_into(
            high + view[pos + 1 : pos + HEADER_LEN],
            view[pos + HEADER_LEN : pos + OVERHEAD + size],
            out[i * stride : i * stride + size],
        ):
            append(-1)
            continue
        seen[slot] = max(seen[slot], low)
        append(size)
    return rows, lengths, (seen[0], seen[1], seen[2], seen[3])
