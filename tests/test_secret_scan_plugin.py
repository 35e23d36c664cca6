"""The suite-wide secret scan (tests/secret_scan.py) really fails a run that leaks a secret.

Each case runs pytest in a subprocess on a one-test file with only the plugin loaded, so the inner
run's outcome can be checked without touching this session. The inner runs live outside this
session's base temp directory: the planted secrets would otherwise fail this session's own scan.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from secret_scan import collect_secrets

TESTS = Path(__file__).resolve().parent
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "secret_scan", "-p", "no:cacheprovider"]


def _inner_run(where: Path, test: str, **env: str) -> subprocess.CompletedProcess[str]:
    (where / "test_inner.py").write_text(test)
    return subprocess.run(
        [*PYTEST, "--basetemp", str(where / "base"), "test_inner.py"],
        cwd=where,
        env={**os.environ, "PYTHONPATH": str(TESTS), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def inner_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vpncloud-secret-scan-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def secret() -> str:
    # a private key of the fixtures: always among the secrets the scan looks for
    keys = sorted(s for s in collect_secrets() if len(s) >= 40)
    assert keys, "no private key found in tests/fixtures"
    return keys[0]


def test_a_printed_secret_fails_the_run(inner_dir: Path, secret: str) -> None:
    run = _inner_run(inner_dir, f"def test_inner():\n    print({secret!r})\n")
    assert run.returncode == 1, run.stdout[-2000:]
    assert "SECRETS FOUND IN OUTPUT" in run.stdout and f"{secret[:4]}... in" in run.stdout
    assert secret not in run.stdout  # the report names where, never the secret itself


def test_a_secret_in_an_output_file_fails_the_run(inner_dir: Path, secret: str) -> None:
    test = f"def test_inner(tmp_path):\n    (tmp_path / 'daemon.log').write_text({secret!r})\n"
    run = _inner_run(inner_dir, test)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "daemon.log" in run.stdout


def test_clean_output_passes_and_report_mode_only_reports(inner_dir: Path, secret: str) -> None:
    clean = _inner_run(inner_dir, "def test_inner():\n    print('nothing to see')\n")
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert "secret scan: no secret in" in clean.stdout
    leak = f"def test_inner():\n    print({secret!r})\n"
    report = _inner_run(inner_dir, leak, VPNCLOUD_SECRET_SCAN="report")
    assert report.returncode == 0 and "SECRETS FOUND IN OUTPUT" in report.stdout
