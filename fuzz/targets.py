"""Fuzz targets: one function per decoder (and the node's receive path), shared by atheris and pytest.

Each target takes arbitrary bytes and calls a decoder; the decoder may only fail in its documented
way (``DecodeError``, ``CryptoError``/``InitError``, ``ConfigError``; some never fail). Any other
exception escapes and is a finding. ``fuzz/fuzz_<name>.py`` runs a target under atheris;
``tests/test_security_fuzz.py`` runs every target for a bounded number of iterations in CI.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable

from vpncloud.core import base62
from vpncloud.core.acl import AclPolicy, AclRule, parse_ip_packet
from vpncloud.core.beacon import decode_beacon
from vpncloud.core.crypto_core import CryptoCore
from vpncloud.core.errors import ConfigError, CryptoError, DecodeError, InitError
from vpncloud.core.handshake import AlgorithmList, decode_init, parse_init
from vpncloud.core.identity import Identity
from vpncloud.core.messages import NodeInfo
from vpncloud.core.node import Node, NodeConfig
from vpncloud.core.payload import parse_frame, parse_packet
from vpncloud.core.peer_crypto import CryptoConfig
from vpncloud.core.primitives import Algorithm
from vpncloud.core.rotation import RotationMessage
from vpncloud.core.types import Range, decode_address, parse_address, parse_listen, parse_sockaddr

_IDENTITY = Identity(bytes(range(32)))
_ALGS = [(Algorithm.AES128, 1000.0), (Algorithm.AES256, 900.0), (Algorithm.CHACHA20, 800.0)]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def fuzz_base62(data: bytes) -> None:
    for fn in (base62.decode, base62.decode_key):
        with contextlib.suppress(DecodeError):
            fn(_text(data))


def fuzz_nodeinfo(data: bytes) -> None:
    try:
        info = NodeInfo.decode(data)
    except DecodeError:
        return
    NodeInfo.decode(info.encode())  # what we decoded must re-encode to something we accept


def fuzz_init(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_init(data)
    with contextlib.suppress(CryptoError, InitError):
        parse_init(data, _IDENTITY)
    AlgorithmList.decode(data)


def fuzz_rotation(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        RotationMessage.decode(data)


def fuzz_beacon(data: bytes) -> None:
    decode_beacon(_text(data), "pw", 50, 480000)
    decode_beacon(_text(data), "", None, 0)


def fuzz_payload(data: bytes) -> None:
    for fn in (parse_packet, parse_frame):
        with contextlib.suppress(DecodeError):
            fn(data)


def fuzz_address(data: bytes) -> None:
    for pos in (0, 1, 3):
        for fn in (decode_address, Range.decode):
            with contextlib.suppress(DecodeError):
                fn(data, pos)
    text = _text(data)
    for tfn in (parse_address, Range.parse, parse_sockaddr, parse_listen):
        with contextlib.suppress(DecodeError):
            tfn(text)


_POLICY_RULES = AclPolicy.from_dict(
    {
        "rules": [
            {"src": ["10.0.0.0/8", "fd00::/8"], "dst": ["0.0.0.0/0", "::/0"], "proto": "tcp", "ports": [22]}
        ]
    }
).rules


def fuzz_acl_packet(data: bytes) -> None:
    parse_ip_packet(data)
    policy = AclPolicy((*_POLICY_RULES, AclRule((), (), "icmp")), max_flows=8)
    for frame in (False, True):
        policy.check(data, 0.0, outbound=True, frame=frame)
        policy.check(data, 1.0, outbound=False, frame=frame)


_CORE_KEY = bytes(range(16))


def fuzz_crypto_core(data: bytes) -> None:
    core = CryptoCore(Algorithm.AES128, _CORE_KEY, True, random.Random(1))
    with contextlib.suppress(CryptoError):
        core.decrypt(data)


def fuzz_config(data: bytes) -> None:
    from vpncloud.config import load_config_text

    with contextlib.suppress(ConfigError):
        load_config_text(_text(data), allow_v1=True)


def fuzz_security_file(data: bytes) -> None:
    import yaml

    from vpncloud.daemon.security_file import parse_security

    try:
        parsed = yaml.safe_load(_text(data))
    except yaml.YAMLError:
        return
    with contextlib.suppress(ConfigError):
        parse_security(parsed)


def fuzz_control(data: bytes) -> None:
    """The control server's request parser (the part that sees untrusted bytes)."""
    from vpncloud.daemon.control import ControlServer

    answer = ControlServer._answer(_ControlStub(), data.split(b"\n", 1)[0])  # type: ignore[arg-type]
    assert isinstance(answer, dict) and "ok" in answer
    json.dumps(answer)


class _ControlStub:
    @staticmethod
    def handler(request: dict[str, object]) -> dict[str, object]:
        return {"ok": request.get("cmd") == "status"}


# --- the node's receive path ---------------------------------------------------------------------


def _established_pair() -> tuple[Node, Node, list[bytes]]:
    """Two real nodes with a finished handshake, and some genuine b->a session datagrams."""
    rng_a, rng_b = random.Random(11), random.Random(12)
    cfg = CryptoConfig(_IDENTITY, list(_ALGS))
    a = Node(NodeConfig(), cfg, 0.0, rng_a)
    b = Node(NodeConfig(), cfg, 0.0, rng_b)
    a_addr, b_addr = ("::ffff:10.0.0.1", 3210), ("::ffff:10.0.0.2", 3210)
    a.connect([b_addr], 0.0)
    # The initiator's first tick repeats the PING (spec 6.7): b's byte budget pays its PONG only then.
    a.handle_timer(0.0)
    for _ in range(10):
        for d, _dst in a.datagrams_to_send():
            b.receive_datagram(d, a_addr, 0.0)
        for d, _dst in b.datagrams_to_send():
            a.receive_datagram(d, b_addr, 0.0)
    assert a.peers and b.peers, "handshake did not complete"
    from vpncloud.sim.harness import ipv4_packet

    b.receive_packet(ipv4_packet("10.99.0.2", "10.99.0.1", b"hello"), 0.0)
    b.handle_timer(1.0)
    genuine = [d for d, _ in b.datagrams_to_send()]
    return a, b, genuine


_PAIR: tuple[Node, Node, list[bytes]] | None = None


def fuzz_node(data: bytes) -> None:
    """Split the input into datagrams for node a: from its peer's address, from strangers, mutations."""
    global _PAIR
    if _PAIR is None:
        _PAIR = _established_pair()
    a, _b, genuine = _PAIR
    b_addr = ("10.0.0.2", 3210)
    pos, now = 0, 2.0
    while pos < len(data):
        ctl = data[pos]
        n = data[pos + 1] if pos + 1 < len(data) else 0
        chunk = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        now += (ctl >> 5) / 4
        kind = ctl & 7
        if kind == 0:
            a.receive_datagram(chunk, b_addr, now)
        elif kind == 1:
            a.receive_datagram(chunk, (f"192.0.2.{ctl}", 1000 + n), now)
        elif kind == 2 and genuine:
            g = bytearray(genuine[n % len(genuine)])
            for i, byte in enumerate(chunk[:8]):
                g[(i * 37 + byte) % len(g)] ^= byte or 1
            a.receive_datagram(bytes(g), b_addr, now)
        elif kind == 3 and genuine:
            a.receive_datagram(genuine[n % len(genuine)], b_addr, now)  # replay
        elif kind == 4:
            a.receive_packet(chunk, now)
        elif kind == 5:
            a.handle_timer(now)
        else:
            a.receive_datagram(b"\xff" + chunk, b_addr, now)
    a.datagrams_to_send()
    a.packets_to_device()
    while a.next_event() is not None:
        pass
    json.dumps(a.status(now))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "base62": fuzz_base62,
    "nodeinfo": fuzz_nodeinfo,
    "init": fuzz_init,
    "rotation": fuzz_rotation,
    "beacon": fuzz_beacon,
    "payload": fuzz_payload,
    "address": fuzz_address,
    "acl_packet": fuzz_acl_packet,
    "crypto_core": fuzz_crypto_core,
    "config": fuzz_config,
    "security_file": fuzz_security_file,
    "control": fuzz_control,
    "node": fuzz_node,
}
