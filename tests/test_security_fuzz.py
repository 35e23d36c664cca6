"""Fuzzing in CI: every target in fuzz/ under hypothesis and (bounded) atheris; a stateful machine that
interleaves random datagrams with a real handshake between two nodes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vpncloud.core.identity import Identity
from vpncloud.core.node import Node, NodeConfig
from vpncloud.core.peer_crypto import CryptoConfig
from vpncloud.core.primitives import Algorithm
from vpncloud.core.types import Range, SocketAddr
from vpncloud.sim.harness import ipv4_packet

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
ATHERIS_RUNS = int(os.environ.get("VPNCLOUD_FUZZ_RUNS", "3000"))


def _targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vpncloud_fuzz_targets", FUZZ / "targets.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TARGETS = _targets().TARGETS


def test_every_target_has_an_entry_point() -> None:
    files = {p.name for p in FUZZ.glob("fuzz_*.py")}
    assert files == {f"fuzz_{name}.py" for name in TARGETS}


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_target_under_hypothesis(name: str, data: bytes) -> None:
    TARGETS[name](data)


def _atheris_missing() -> str | None:
    return None if importlib.util.find_spec("atheris") else "atheris is not installed (pip install atheris)"


@pytest.mark.skipif(_atheris_missing() is not None, reason=str(_atheris_missing()))
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_under_atheris_bounded(name: str, tmp_path: Path) -> None:
    """A few thousand coverage-guided iterations per target (VPNCLOUD_FUZZ_RUNS overrides)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"fuzz_{name}.py"),
            f"-runs={ATHERIS_RUNS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            "-max_len=512",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"Done {ATHERIS_RUNS} runs" in out
    assert list(tmp_path.glob("crash-*")) == []


# --- stateful: random datagrams interleaved with a real handshake ---------------------------------

ALGS = [(Algorithm.AES128, 1000.0), (Algorithm.CHACHA20, 900.0)]
A_ADDR: SocketAddr = ("::ffff:10.0.0.1", 3210)
B_ADDR: SocketAddr = ("::ffff:10.0.0.2", 3210)


class HandshakeUnderFire(RuleBasedStateMachine):
    """Two real nodes with an in-memory wire; junk, replays, bit flips and spoofed sources thrown in."""

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        ident = Identity(random.Random(seed).randbytes(32))
        cfg = CryptoConfig(ident, list(ALGS))
        self.now = 0.0
        claim_a = [Range(bytes([10, 99, 0, 1]), 32)]
        claim_b = [Range(bytes([10, 99, 0, 2]), 32)]
        self.a = Node(NodeConfig(claims=claim_a), cfg, 0.0, random.Random(seed + 1))
        self.b = Node(NodeConfig(claims=claim_b), cfg, 0.0, random.Random(seed + 2))
        self.wire: list[tuple[bytes, SocketAddr, SocketAddr]] = []  # (data, src, dst)
        self.seen: list[bytes] = []

    def _drain(self) -> None:
        for node, src in ((self.a, A_ADDR), (self.b, B_ADDR)):
            for data, dst in node.datagrams_to_send():
                self.wire.append((data, src, dst))
                self.seen.append(data)
            node.packets_to_device()
            while node.next_event() is not None:
                pass
        del self.seen[:-50]

    def _node(self, addr: SocketAddr) -> Node | None:
        return {A_ADDR: self.a, B_ADDR: self.b}.get(addr)

    @rule()
    def connect(self) -> None:
        self.a.connect([B_ADDR], self.now)
        self._drain()

    @rule(n=st.integers(1, 5))
    def deliver(self, n: int) -> None:
        for _ in range(min(n, len(self.wire))):
            data, src, dst = self.wire.pop(0)
            node = self._node(dst)
            if node is not None:
                node.receive_datagram(data, src, self.now)
        self._drain()

    @rule()
    def lose_one(self) -> None:
        if self.wire:
            self.wire.pop(0)

    @rule(data=st.binary(max_size=300), spoof=st.booleans(), to_a=st.booleans())
    def junk(self, data: bytes, spoof: bool, to_a: bool) -> None:
        target, peer = (self.a, B_ADDR) if to_a else (self.b, A_ADDR)
        target.receive_datagram(data, peer if spoof else ("::ffff:192.0.2.9", 999), self.now)
        self._drain()

    @precondition(lambda self: bool(self.seen))
    @rule(i=st.integers(0, 49), flip=st.integers(0, 4000), to_a=st.booleans(), spoof=st.booleans())
    def replay_or_flip(self, i: int, flip: int, to_a: bool, spoof: bool) -> None:
        data = bytearray(self.seen[i % len(self.seen)])
        if flip % 3:
            data[flip % len(data)] ^= 1 << (flip % 8)
        target, peer = (self.a, B_ADDR) if to_a else (self.b, A_ADDR)
        target.receive_datagram(bytes(data), peer if not spoof else ("::ffff:198.51.100.1", 1), self.now)
        self._drain()

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.a.handle_timer(self.now)
        self.b.handle_timer(self.now)
        self._drain()

    @rule(payload=st.binary(max_size=60))
    def send_data(self, payload: bytes) -> None:
        self.a.receive_packet(ipv4_packet("10.99.0.1", "10.99.0.2", payload), self.now)
        self._drain()

    @invariant()
    def status_is_json(self) -> None:
        if hasattr(self, "a"):
            json.dumps(self.a.status(self.now))
            json.dumps(self.b.status(self.now))

    def teardown(self) -> None:
        """Liveness: after the attack stops, the two can always (re)connect and carry data."""
        if not hasattr(self, "a"):
            return
        self.now += 400  # outlive any half-open session (peer timeout), expire what is stale
        for _ in range(2):
            while self.wire:
                self.deliver(5)
            self.tick(1.0)
        # Bounded: a half-open session (one side established, the other dropped its handshake, e.g.
        # after a reflected PONG made it see "Connected to self") lasts until peer_timeout (300 s),
        # then the configured peer reconnects; handshake retries give up after 120 ticks.
        for _ in range(800):
            while self.wire:
                self.deliver(5)
            if B_ADDR in self.a.peers and A_ADDR in self.b.peers:
                break
            if B_ADDR not in self.a.pending and B_ADDR not in self.a.peers:
                # What a configured peer does. Reconnecting right after a tick would race b's stale
                # PONG retransmission, which kills a fresh initiator (the protocol's behaviour, see
                # the report); a real network does not run in lockstep.
                self.a.connect([B_ADDR], self.now)
                self._drain()
                continue
            self.tick(1.0)
        assert B_ADDR in self.a.peers and A_ADDR in self.b.peers
        packet = ipv4_packet("10.99.0.1", "10.99.0.2", b"still alive")
        self.a.receive_packet(packet, self.now)
        for data, dst in self.a.datagrams_to_send():
            assert dst == B_ADDR
            self.b.receive_datagram(data, A_ADDR, self.now)
        assert packet in self.b.packets_to_device()


TestHandshakeUnderFire = HandshakeUnderFire.TestCase
# Derandomized in CI (the same 60 runs every time); VPNCLOUD_FUZZ_EXPLORE=N explores N random runs.
_EXPLORE = int(os.environ.get("VPNCLOUD_FUZZ_EXPLORE", "0"))
TestHandshakeUnderFire.settings = settings(
    max_examples=_EXPLORE or 60,
    stateful_step_count=40,
    deadline=None,
    derandomize=not _EXPLORE,
    suppress_health_check=[HealthCheck.too_slow],
)
