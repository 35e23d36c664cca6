"""The Python twin of ``_kernels.c``: the same functions, byte for byte (the tests compare them).

Runs when the extension is not built or ``VPNCLOUD_PURE_PYTHON=1``; see ``_kernels.c`` for the
frame layout and the meaning of every argument.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import gro

TAG_LEN = 16
KEY_LEN = 32
SIG_LEN = 64
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

    def seal(self, nonce: bytes, data: bytes | bytearray | memoryview) -> bytes:
        if len(nonce) != 12 or len(data) > MAX_CHUNK:
            raise KernelError("uninitialised Aead, nonce not 12 bytes or data over 1 MiB")
        return self._encrypt(bytes(nonce), bytes(data), None)

    def open(self, nonce: bytes, body: bytes | bytearray | memoryview) -> bytes | None:
        if len(nonce) != 12 or len(body) > MAX_CHUNK + TAG_LEN:
            raise KernelError("uninitialised Aead, nonce not 12 bytes or body over 1 MiB")
        try:
            return self._decrypt(bytes(nonce), bytes(body), None)
        except InvalidTag:
            return None

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
) -> tuple[bytearray, list[int]]:
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
        append(size)
    return rows, lengths


def _check_key(key: bytes | bytearray | memoryview, what: str) -> bytes:
    if len(key) != KEY_LEN:
        raise KernelError(f"{what} must be 32 bytes")
    return bytes(key)


class Ed25519:
    """A 32-byte Ed25519 seed with its public key; cryptography's key object, as in C."""

    __slots__ = ("_key", "public")

    def __init__(self, seed: bytes | bytearray | memoryview) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(_check_key(seed, "an Ed25519 seed"))
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._key.sign(bytes(data))


def ed25519_verify(
    public: bytes | bytearray | memoryview,
    signature: bytes | bytearray | memoryview,
    data: bytes | bytearray | memoryview,
) -> bool:
    if len(public) != KEY_LEN or len(signature) != SIG_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError):
        return False
    return True


class X25519:
    """A 32-byte X25519 private key with its public key; cryptography's key object, as in C."""

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes | bytearray | memoryview) -> None:
        self._key = X25519PrivateKey.from_private_bytes(_check_key(private, "an X25519 private key"))
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def exchange(self, peer_public: bytes | bytearray | memoryview) -> bytes | None:
        peer = X25519PublicKey.from_public_bytes(_check_key(peer_public, "an X25519 public key"))
        try:
            return self._key.exchange(peer)
        except ValueError:  # the all-zero secret of a small-order point, as OpenSSL refuses it in C
            return None


def _finish_vec(total: Any) -> Any:
    """``offload.finish`` for a numpy array of sums."""
    return (0xFFFF - total % 0xFFFF) % 0xFFFF


def tcp_rows(
    packet: bytes | bytearray | memoryview,
    prefix: bytes,
    iphl: int,
    hl: int,
    mss: int,
    ipv4: bool,
    ip_id: int,
    ip_base: int,
    tcp_base: int,
    seq0: int,
    flags: tuple[int, int, int],
) -> bytearray:
    """The twin of the C ``tcp_rows``: a handful of numpy operations instead of a loop per
    segment (ImportError without numpy: the caller then cuts segment by segment)."""
    import numpy as np

    total = len(packet) - hl
    first, mid, last_flags = flags
    if (
        iphl < 20
        or not iphl + 20 <= hl <= min(len(packet), 1024)
        or not 1 <= mss <= MAX_CHUNK
        or total <= mss
        or (total + mss - 1) // mss > MAX_ROWS
        or len(prefix) > 64
        or not 0 <= ip_id <= 0xFFFF
        or not 0 <= seq0 <= 0xFFFFFFFF
        or not 0 <= ip_base <= 0xFFFFFFFF
        or not 0 <= tcp_base <= 0xFFFFFFFF
        or not all(0 <= f <= 255 for f in flags)
    ):
        raise KernelError("tcp_rows: the layout does not fit the packet")
    count = (total + mss - 1) // mss
    full = total // mss
    last = total - full * mss
    ip0 = 1 + len(prefix)  # where the IP packet starts in a row
    stride = ip0 + hl + mss
    pkt = np.frombuffer(packet, dtype=np.uint8)
    out = bytearray(count * stride)
    rows = np.frombuffer(out, dtype=np.uint8).reshape(count, stride)
    if prefix:
        rows[:, 1:ip0] = np.frombuffer(prefix, dtype=np.uint8)
    rows[:, ip0 : ip0 + hl] = pkt[:hl]
    rows[:full, ip0 + hl :] = pkt[hl : hl + full * mss].reshape(full, mss)
    seglen = np.full(count, mss, dtype=np.int64)
    if last:
        rows[full, ip0 + hl : ip0 + hl + last] = pkt[hl + full * mss :]
        seglen[-1] = last
    idx = np.arange(count, dtype=np.int64)
    seq = (seq0 + idx * mss) & 0xFFFFFFFF
    fl = np.full(count, mid, dtype=np.int64)
    fl[0] = first
    fl[-1] = last_flags
    base = ip0 + iphl  # TCP header offset within a row
    if ipv4:
        ip_len = hl + seglen
        ident = (ip_id + idx) & 0xFFFF
        fields = rows[:, ip0 + 2 : ip0 + 6].view(">u2")
        fields[:, 0] = ip_len
        fields[:, 1] = ident
        rows[:, ip0 + 10 : ip0 + 12].view(">u2")[:, 0] = _finish_vec(ip_base + ip_len + ident)
    else:
        rows[:, ip0 + 4 : ip0 + 6].view(">u2")[:, 0] = hl - iphl + seglen
    # Payload sums straight from the rows (cache-hot), the zero padding of the last row included.
    # Even mss: little-endian words (native, fast), a byte swap is a factor 256 mod 0xFFFF. Odd
    # mss: the payload in even-width zero-padded rows (the padding rule of RFC 1071).
    if mss & 1 == 0:
        words = rows[:, ip0 + hl : stride].view("<u2")
        sums = np.add.reduce(words, axis=1, dtype=np.uint64).astype(np.int64) * 256
    else:
        wide = np.zeros((count, mss + 1), dtype=np.uint8)
        wide[:, :mss] = rows[:, ip0 + hl : stride]
        sums = np.add.reduce(wide.view(">u2"), axis=1, dtype=np.uint64).astype(np.int64)
    csum = tcp_base + seglen + (seq >> 16) + (seq & 0xFFFF) + fl + sums
    rows[:, base + 4 : base + 8].view(">u4")[:, 0] = seq
    rows[:, base + 13] = fl
    rows[:, base + 16 : base + 18].view(">u2")[:, 0] = _finish_vec(csum)
    return out


def coalesce_rows(
    buf: bytes | bytearray | memoryview, stride: int, lengths: Sequence[int]
) -> tuple[bytes, int] | None:
    """The twin of the C ``coalesce_rows``: numpy checks the rows of one decrypted GRO train
    (row ``i`` at ``i * stride + 1``, ``lengths[i]`` bytes) and the longest mergeable prefix,
    with the short or PSH segment that may end it, becomes one GSO device write. (write,
    rows taken) or None when the first rows do not merge (or without numpy): the caller then
    goes packet by packet."""
    n = len(lengths)
    if (
        not 1 <= n <= MAX_ROWS
        or not 1 <= stride <= MAX_CHUNK
        or not all(0 <= length < stride for length in lengths)
        or len(buf) < stride * (n - 1) + 1 + lengths[-1]
    ):
        raise KernelError("coalesce_rows: rows do not fit the buffer")
    np = gro._np
    size = lengths[0]
    k = n if lengths[-1] == size else n - 1
    if np is None or k < gro.FAST_MIN or lengths.count(size) != k:
        return None
    first = bytes(memoryview(buf)[1 : 1 + size])
    # a train of pure ACKs (no payload: nothing to merge) is settled here, before any numpy
    info = gro.tcp_info(first)
    if info is None or info[6] & 0x08:
        return None
    # k rows of ``size`` bytes at ``stride``: inside the buffer by the checks above (the buffer
    # may end right after the last packet, e.g. rows shifted behind an Ethernet header)
    pk = np.ndarray((k, size), np.uint8, buf, 1, (stride, 1))
    key, iphl, hl, seq, plen, v6, _flags = info
    limit = min(k, gro.MAX_SEGMENTS, (gro.MAX_COALESCED - hl) // plen)
    m = gro.mergeable_prefix(pk[:limit], iphl, hl, plen)
    if m < 2:
        return None
    payloads = [pk[:m, hl:].tobytes()]
    total = hl + m * plen
    last_flags = int(pk[m - 1, iphl + 13])
    taken = m
    if m < n and m < gro.MAX_SEGMENTS:
        # The next segment may end the run (like the kernel's GRO): the PSH segment at the end
        # of every TSO super-packet, or the shorter last one of the train.
        nxt = bytes(memoryview(buf)[m * stride + 1 : m * stride + 1 + lengths[m]])
        ninfo = gro.tcp_info(nxt)
        if (
            ninfo is not None
            and ninfo[0] == key
            and ninfo[3] == (seq + m * plen) & 0xFFFFFFFF
            and ninfo[4] <= plen
            and (ninfo[4] < plen or ninfo[6] & 0x08)
            and total + ninfo[4] <= gro.MAX_COALESCED
        ):
            payloads.append(nxt[hl:])
            total += ninfo[4]
            last_flags = ninfo[6]
            taken = m + 1
    return gro.gso_write(first, iphl, hl, v6, plen, last_flags, total, payloads), taken
