"""atheris targets for every entry point of the C kernels (issue 21), run by scripts/fuzz.sh.

    python fuzz/kernels.py TARGET SO_PATH [libFuzzer flags]

TARGET is one of aead, seal, open, seal_rows, open_train, tcp_rows, coalesce_rows, ed25519,
ed25519_verify, x25519;
SO_PATH the extension built with -fsanitize=address,undefined,fuzzer-no-link (the script builds it).
Each target feeds the C entry point arbitrary arguments and checks the result against the Python
twin: a memory error (ASan), an undefined behaviour (UBSan), an exception other than the documented
ones or a difference from the twin is a finding.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import atheris

os.environ["VPNCLOUD_PURE_PYTHON"] = "1"  # the package must not load the uninstrumented build
from vpncloud.fastpath import _python as PY

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from curve_points import SMALL_ORDER
from gro_support import TWISTS, layout, train_rows, twist

KEY_LEN = {1: 16, 2: 32, 3: 32}
#: What the kernels may raise for arguments they refuse (the parser's OverflowError included).
EXPECTED = (ValueError, OverflowError, TypeError)


def load(path: str) -> Any:
    loader = importlib.machinery.ExtensionFileLoader("vpncloud.fastpath._kernels", path)
    spec = importlib.util.spec_from_file_location("vpncloud.fastpath._kernels", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        result = call()
    except EXPECTED as err:
        return ("error", None if isinstance(err, ValueError) else type(err).__name__)
    if isinstance(result, tuple):
        return ("ok", (bytes(result[0]), *result[1:]))
    if result is None or isinstance(result, bool):
        return ("ok", result)
    return ("ok", bytes(result))


def merged(call: Callable[[], Any]) -> tuple[str, Any]:
    """``outcome`` for coalesce_rows, whose result is (write, rows taken) or None."""
    try:
        return ("ok", call())
    except EXPECTED as err:
        return ("error", None if isinstance(err, ValueError) else type(err).__name__)


def key_for(fdp: atheris.FuzzedDataProvider) -> tuple[int, bytes]:
    alg = fdp.ConsumeIntInRange(1, 3)
    return alg, fdp.ConsumeBytes(KEY_LEN[alg])


def keyed_nonce(fdp: atheris.FuzzedDataProvider) -> tuple[int, bytes, bytes] | None:
    """A whole key of a random algorithm and a nonce of 10 to 13 bytes (the right length is 12)."""
    alg, key = key_for(fdp)
    if len(key) != KEY_LEN[alg]:
        return None
    return alg, key, fdp.ConsumeBytes(fdp.ConsumeIntInRange(10, 13))


def odd_length(fdp: atheris.FuzzedDataProvider, size: int) -> bytes:
    """Mostly ``size`` bytes, sometimes one more or fewer (or none at all)."""
    return fdp.ConsumeBytes(fdp.PickValueInList([size, size, size, size - 1, size + 1, 0]))


def flip(fdp: atheris.FuzzedDataProvider, data: bytes) -> bytes:
    """``data`` with one bit flipped at a chosen place, or unchanged."""
    if not data or not fdp.ConsumeBool():
        return data
    pos = fdp.ConsumeIntInRange(0, len(data) * 8 - 1)
    out = bytearray(data)
    out[pos // 8] ^= 1 << pos % 8
    return bytes(out)


def make_targets(C: Any) -> dict[str, Callable[[bytes], None]]:
    def aead(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        alg = fdp.ConsumeIntInRange(-1, 5)
        key = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        c = outcome(lambda: C.Aead(alg, key).seal(bytes(12), b""))
        assert c == outcome(lambda: PY.Aead(alg, key).seal(bytes(12), b"")), (alg, key)

    def seal(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        if (keyed := keyed_nonce(fdp)) is None:
            return
        alg, key, nonce = keyed
        plain = fdp.ConsumeBytes(fdp.remaining_bytes())
        assert outcome(lambda: C.Aead(alg, key).seal(nonce, plain)) == outcome(
            lambda: PY.Aead(alg, key).seal(nonce, plain)
        )

    def open_(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        if (keyed := keyed_nonce(fdp)) is None:
            return
        alg, key, nonce = keyed
        if len(nonce) == 12 and fdp.ConsumeBool():
            # a real frame, maybe with a bit flipped, so that opening runs and not only the refusals
            body = flip(fdp, C.Aead(alg, key).seal(nonce, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))))
        else:
            body = fdp.ConsumeBytes(fdp.remaining_bytes())
        c = outcome(lambda: C.Aead(alg, key).open(nonce, body))
        assert c == outcome(lambda: PY.Aead(alg, key).open(nonce, body)), (alg, nonce, body)

    def ed25519(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        seed = odd_length(fdp, 32)
        msg = fdp.ConsumeBytes(fdp.remaining_bytes())
        c = outcome(lambda: C.Ed25519(seed).public)
        assert c == outcome(lambda: PY.Ed25519(seed).public), seed
        if c[0] == "ok":
            assert C.Ed25519(seed).sign(msg) == PY.Ed25519(seed).sign(msg), (seed, msg)

    def ed25519_verify(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        if fdp.ConsumeBool():
            # a valid signature by a real key, then maybe a bit of key, signature or data flipped
            seed = fdp.ConsumeBytes(32).ljust(32, b"\0")
            msg = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            key = C.Ed25519(seed)
            pub, sig = flip(fdp, key.public), flip(fdp, key.sign(msg))
            msg = flip(fdp, msg)
        else:
            pub, sig = odd_length(fdp, 32), odd_length(fdp, 64)
            msg = fdp.ConsumeBytes(fdp.remaining_bytes())
        c = C.ed25519_verify(pub, sig, msg)  # never raises: an exception here is a finding
        assert c == PY.ed25519_verify(pub, sig, msg), (pub, sig, msg)

    def x25519(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        private = odd_length(fdp, 32)
        # half the time a small-order point (or one bit away from it): the all-zero secret is refused
        small = fdp.ConsumeBool()
        peer = flip(fdp, fdp.PickValueInList(SMALL_ORDER)) if small else odd_length(fdp, 32)
        c = outcome(lambda: C.X25519(private).public)
        assert c == outcome(lambda: PY.X25519(private).public), private
        if c[0] == "ok":
            key_c, key_py = C.X25519(private), PY.X25519(private)
            assert outcome(lambda: key_c.exchange(peer)) == outcome(lambda: key_py.exchange(peer)), (
                private,
                peer,
            )

    def seal_rows(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        alg, key = key_for(fdp)
        if len(key) != KEY_LEN[alg]:
            return
        args = (
            fdp.ConsumeIntInRange(-1, 256),
            fdp.ConsumeIntInRange(-3, 300),
            fdp.ConsumeIntInRange(-1, 8),
            fdp.ConsumeIntInRange(-2, 300),
            fdp.ConsumeIntInRange(-2, 300),
            fdp.ConsumeIntInRange(-1, 256),
            fdp.ConsumeIntInRange(-1, 1 << 33),
            fdp.ConsumeIntInRange(-1, 1 << 65),
        )
        src = fdp.ConsumeBytes(fdp.remaining_bytes())
        full = (args[0], src, *args[1:])
        c = outcome(lambda: C.Aead(alg, key).seal_rows(*full))
        assert c == outcome(lambda: PY.Aead(alg, key).seal_rows(*full)), args

    def open_train(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        alg, key = key_for(fdp)
        if len(key) != KEY_LEN[alg]:
            return
        seg = fdp.ConsumeIntInRange(20, 200)
        half = fdp.ConsumeIntInRange(-1, 256)
        floors = tuple(fdp.ConsumeIntInRange(0, 1 << 57) for _ in range(4))
        frames = []
        ref_c = C.Aead(alg, key)
        # some real frames (sealed by the kernel itself) so that the opening code runs, not only the
        # rejections; the fuzzer then mutates them
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            body = fdp.ConsumeBytes(max(0, seg - 24))
            nonce = bytes((0x80, 0, 0, 0, 0)) + fdp.ConsumeBytes(7).ljust(7, b"\0")
            frames.append(bytes((fdp.ConsumeIntInRange(0, 5),)) + nonce[5:] + ref_c.seal(nonce, body))
        tail = fdp.ConsumeBytes(fdp.remaining_bytes())
        train = b"".join(frames) + tail
        c = outcome(lambda: C.open_train((ref_c,) * 4, floors, half, train, seg))
        py_aead = PY.Aead(alg, key)
        assert c == outcome(lambda: PY.open_train((py_aead,) * 4, floors, half, train, seg))

    def tcp_rows(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        iphl = fdp.ConsumeIntInRange(0, 64)
        args = (
            fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 70)),  # prefix
            iphl,
            iphl + fdp.ConsumeIntInRange(0, 80),  # hl
            fdp.ConsumeIntInRange(-1, 2000),  # mss
            fdp.ConsumeBool(),
            fdp.ConsumeIntInRange(-1, 0x10000),
            fdp.ConsumeIntInRange(0, 1 << 33),
            fdp.ConsumeIntInRange(0, 1 << 33),
            fdp.ConsumeIntInRange(0, 1 << 33),
            (fdp.ConsumeIntInRange(-1, 256), fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 255)),
        )
        packet = fdp.ConsumeBytes(fdp.remaining_bytes())
        c = outcome(lambda: C.tcp_rows(packet, *args))
        assert c == outcome(lambda: PY.tcp_rows(packet, *args)), args

    def coalesce_rows(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        if fdp.ConsumeBool():
            # a real train of one flow (so that merging runs, not only the refusals), then broken
            v6 = fdp.ConsumeBool()
            mss = fdp.PickValueInList([1, 8, 99, 1300])
            packets = train_rows(
                v6,
                fdp.ConsumeIntInRange(1, 70),
                mss,
                fdp.ConsumeIntInRange(0, mss - 1),
                fdp.PickValueInList([b"", b"\x01\x01\x04\x02", b"\x01\x01\x08\x0a" + bytes(8)]),
                fdp.ConsumeIntInRange(0, 0xFFFFFFFF),
                fdp.ConsumeBool(),
            )
            for _ in range(fdp.ConsumeIntInRange(0, 4)):
                kind = fdp.PickValueInList(TWISTS)
                twist(packets, v6, kind, fdp.ConsumeIntInRange(0, 69), fdp.ConsumeIntInRange(0, 255))
            buf, stride, lengths = layout(packets, fdp.ConsumeIntInRange(0, 4))
            if fdp.ConsumeBool():  # a buffer cut short or a stride that lies
                buf = buf[: fdp.ConsumeIntInRange(0, len(buf))]
                stride += fdp.ConsumeIntInRange(-2, 2)
        else:
            stride = fdp.ConsumeIntInRange(-1, 200)
            lengths = [fdp.ConsumeIntInRange(-2, 210) for _ in range(fdp.ConsumeIntInRange(0, 8))]
            buf = bytearray(fdp.ConsumeBytes(fdp.remaining_bytes()))
        c = merged(lambda: C.coalesce_rows(buf, stride, lengths))
        assert c == merged(lambda: PY.coalesce_rows(buf, stride, lengths)), (stride, lengths)

    return {
        "aead": aead,
        "seal": seal,
        "open": open_,
        "seal_rows": seal_rows,
        "open_train": open_train,
        "tcp_rows": tcp_rows,
        "coalesce_rows": coalesce_rows,
        "ed25519": ed25519,
        "ed25519_verify": ed25519_verify,
        "x25519": x25519,
    }


def main() -> None:
    target, path = sys.argv[1], sys.argv[2]
    test_one = make_targets(load(path))[target]
    atheris.Setup([sys.argv[0], *sys.argv[3:]], test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
