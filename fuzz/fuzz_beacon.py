"""atheris entry point for one target of targets.py. Usage: python fuzz/FILE.py [-runs=N] [corpus]"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["vpncloud", "targets"]):
    from targets import TARGETS


def main() -> None:
    atheris.Setup(sys.argv, TARGETS["beacon"])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
