"""Tiny loader for the captured VpnCloud 2.4.0 vectors copied into ``tests/fixtures/vectors``.

Usage::

    from tests.vectors import load_datagrams, load_scenario
    for src, dst, data in load_datagrams("plain"):
        ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).parent / "fixtures" / "vectors"

SCENARIOS = ("plain", "aes128", "keys-chacha", "beacon", "stats", "untrusted", "aes256-rotation")


def load_scenario(name: str) -> dict[str, Any]:
    """The whole scenario JSON document (see the vectors README for its layout)."""
    doc: dict[str, Any] = json.loads((VECTORS_DIR / f"{name}.json").read_text())
    return doc


def load_datagrams(name: str) -> list[tuple[str, str, bytes]]:
    """Every captured UDP payload in capture order as ``(src, dst, payload)``; src/dst are ``ip:port``."""
    return [(p["src"], p["dst"], bytes.fromhex(p["hex"])) for p in load_scenario(name)["packets"]]


def load_packets(name: str) -> list[dict[str, Any]]:
    """The annotated packet dicts, with the raw payload added under ``"data"``."""
    packets = load_scenario(name)["packets"]
    for p in packets:
        p["data"] = bytes.fromhex(p["hex"])
    return list(packets)
