"""Startup crypto benchmark (spec 23.2).

It reads a clock, so it lives outside the sans-I/O core. For each algorithm a sender/receiver core
pair encrypts and decrypts a 1000-byte message in batches of 1000 until ``duration`` has elapsed;
speed = bytes processed (encrypt + decrypt) / seconds / 10^6, rounded to f32 like the original.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable

from vpncloud.core.crypto_core import CryptoCore
from vpncloud.core.primitives import Algorithm, SystemRng

__all__ = ["measure_speeds"]

_MESSAGE_LEN = 1000
_BATCH = 1000


def _speed(alg: Algorithm, duration: float, batch: int) -> float:
    rng = SystemRng()
    key = rng.randbytes(alg.key_len)
    sender = CryptoCore(alg, key, True, rng)
    receiver = CryptoCore(alg, key, False, rng)
    message = rng.randbytes(_MESSAGE_LEN)
    iterations = 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            receiver.decrypt(sender.encrypt(message))
        iterations += batch
        elapsed = time.perf_counter() - start
        if elapsed >= duration:
            break
    speed = iterations * _MESSAGE_LEN * 2 / elapsed / 1e6
    return float(struct.unpack(">f", struct.pack(">f", speed))[0])


def measure_speeds(algorithms: Iterable[Algorithm], duration: float = 0.1) -> dict[Algorithm, float]:
    """Speed in MB/s (10^6 bytes/s) per algorithm; PLAIN is +inf.

    Batches are smaller than the original's 1000 when ``duration`` is short, so a test run does not
    overshoot the budget by much (the value is a rate either way).
    """
    batch = _BATCH if duration >= 0.1 else 100
    result: dict[Algorithm, float] = {}
    for alg in algorithms:
        alg = Algorithm(alg)
        result[alg] = math.inf if alg is Algorithm.PLAIN else _speed(alg, duration, batch)
    return result
