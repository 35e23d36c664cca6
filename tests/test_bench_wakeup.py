"""bench/wakeup.py runs and measures every pass it names (figures are printed, never asserted)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import wakeup


def test_every_pass_gets_a_positive_median_per_gap(capsys: pytest.CaptureFixture[str]) -> None:
    assert wakeup.main(["--rounds", "3"]) == 0
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "µs" not in line
    ]
    assert [r.split("|")[1].strip() for r in rows] == ["core TX", "core RX", "AES-GCM call", "tight loop"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1 : 1 + len(wakeup.GAPS)]
        assert all(re.fullmatch(r"\d+\.\d", c) and float(c) > 0 for c in cells), row


def test_the_core_passes_really_move_the_packet() -> None:
    subs = wakeup.subjects()
    out = subs["core TX"]()
    assert isinstance(out, list) and len(out) == 1  # one datagram to the peer
    delivered = subs["core RX"]()
    assert isinstance(delivered, list) and len(delivered) == 1  # the packet reached B's device
