"""pytest plugin: after the whole run, grep everything the suite produced for the secrets it used.

On in every run: tests/conftest.py lists it in ``pytest_plugins``. What is scanned:

* every captured section (stdout, stderr, log records) of every test phase, passed or failed;
* files under pytest's base temp directory whose names look like output: ``*.log``, ``*.out``,
  ``*.stats``, ``*.env``, ``*plan*``, ``*status*``, ``*ansible*`` (configs and keystores hold secrets
  on purpose and are not scanned).

The secrets: the ``PASSWORD``/``*_PASSWORD`` string constants and ``password=...`` literals found in
tests/*.py, and the private keys in tests/fixtures (``Private key: ...`` lines), at least 8 characters
long (shorter ones like ``test`` match ordinary words). Hits are printed in the terminal summary and
turn the session's exit status into 1 (``VPNCLOUD_SECRET_SCAN=report`` only reports).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_OUTPUT_NAME = re.compile(r"(\.log|\.out|\.stats|\.env)$|plan|status|ansible", re.IGNORECASE)
_CONST = re.compile(r"""(?:^|\s)[A-Z_]*PASSWORD[A-Z_]*\s*=\s*["']([^"']{8,})["']""", re.MULTILINE)
_KWARG = re.compile(r"""password\s*=\s*["']([^"']{8,})["']""")
_PRIVATE = re.compile(r"Private key:\s*([0-9A-Za-z]{40,})")

_hits: list[tuple[str, str]] = []
_sections: list[tuple[str, str]] = []


def collect_secrets(root: Path = _TESTS) -> set[str]:
    secrets: set[str] = set()
    for f in root.glob("*.py"):
        text = f.read_text(errors="replace")
        secrets.update(_CONST.findall(text))
        secrets.update(_KWARG.findall(text))
    for f in (root / "fixtures").rglob("*"):
        if f.is_file() and f.stat().st_size < 1_000_000:
            secrets.update(_PRIVATE.findall(f.read_text(errors="replace")))
    return {s for s in secrets if len(s) >= 8}


def scan(texts: list[tuple[str, str]], secrets: set[str]) -> list[tuple[str, str]]:
    return [(where, s[:4] + "...") for where, text in texts for s in secrets if s in text]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, content in report.sections:
        if content:
            _sections.append((f"{report.nodeid} [{report.when}] {name}", content))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    secrets = collect_secrets()
    texts = list(_sections)
    try:
        base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        base = None
    if base is not None and Path(base).exists():
        for f in Path(base).rglob("*"):
            try:
                if f.is_file() and _OUTPUT_NAME.search(f.name) and f.stat().st_size < 20_000_000:
                    texts.append((str(f), f.read_text(errors="replace")))
            except OSError:
                continue
    _hits[:] = scan(texts, secrets)
    if _hits and os.environ.get("VPNCLOUD_SECRET_SCAN", "strict") != "report":
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _hits:
        terminalreporter.section("secret scan: SECRETS FOUND IN OUTPUT", red=True)
        for where, secret in _hits[:50]:
            terminalreporter.line(f"{secret} in {where}")
    else:
        terminalreporter.line(f"secret scan: no secret in {len(_sections)} captured sections or output files")
