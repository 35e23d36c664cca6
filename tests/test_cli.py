"""The ``vpncloud`` command line as a user runs it (real subprocesses, no devices)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "daemon"
SCRIPT = Path(sys.executable).parent / "vpncloud"


def run(
    *args: str, env: dict[str, str] | None = None, module: bool = True
) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "vpncloud"] if module else [str(SCRIPT)]
    full_env = {k: v for k, v in os.environ.items() if k not in ("PASSWORD", "PRIVATE_KEY")}
    full_env.update(env or {})
    return subprocess.run([*base, *args], capture_output=True, text=True, env=full_env, timeout=60)


def genkey_vectors() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    blocks = FIXTURES.joinpath("genkey.txt").read_text().split("$ vpncloud genkey")[1:]
    for block in blocks:
        lines = block.strip().splitlines()
        if not lines[0].startswith("-p "):
            continue
        password = lines[0].split()[1]
        out[password] = (lines[1].split(": ")[1], lines[2].split(": ")[1])
    return out


def test_version_script_and_module_agree() -> None:
    a = run("--version")
    assert a.returncode == 0 and a.stdout.strip() == "VpnCloud v2.4.0"
    if SCRIPT.exists():
        b = run("--version", module=False)
        assert b.stdout == a.stdout and b.returncode == 0


@pytest.mark.parametrize("password", ["test", "test123", "wrongpass"])
def test_genkey_with_password_matches_original(password: str) -> None:
    private, public = genkey_vectors()[password]
    r = run("genkey", "-p", password)
    assert r.returncode == 0
    assert r.stdout == (
        f"Private key: {private}\nPublic key: {public}\n\n"
        "Attention: Keep the private key secret and use only the public key on other nodes "
        "to establish trust.\n"
    )
    # alias, env variable and a global flag before the subcommand
    assert run("-v", "gen-key", env={"PASSWORD": password}).stdout == r.stdout


def test_genkey_random_differs() -> None:
    a, b = run("genkey").stdout, run("genkey").stdout
    assert a.startswith("Private key: ") and a != b


def test_migrate_config(tmp_path: Path) -> None:
    path = tmp_path / "old.net"
    path.write_text("device_type: tap\nshared_key: s\nport: 3000\n")
    r = run("migrate", "--config-file", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "old.net.orig").exists()
    assert "listen: '3000'" in path.read_text()


def test_migrate_missing_file_is_one_line_255(tmp_path: Path) -> None:
    r = run("migrate-config", "--config-file", str(tmp_path / "nope"))
    assert r.returncode == 255
    assert "Traceback" not in r.stdout + r.stderr
    assert "Failed to open config file" in r.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion(shell: str, tmp_path: Path) -> None:
    r = run("completion", "--shell", shell)
    assert r.returncode == 0
    for word in ("genkey", "migrate-config", "status", "--advertise_addresses", "--peer-timeout"):
        assert word.lstrip("-") in r.stdout
    if shell == "bash":
        script = tmp_path / "c.sh"
        script.write_text(r.stdout)
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_bad_config_file_exits_255_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.net"
    path.write_text("crypto: {password: x}\nmode: bridge\n")
    r = run("--config", str(path))
    assert r.returncode == 255
    assert "Traceback" not in r.stdout + r.stderr
    assert "ERROR - " in r.stdout and "neither version 2 nor version 1" in r.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    r = run("--config", str(tmp_path / "none.net"), "-p", "x")
    assert r.returncode == 255 and "Failed to open config file" in r.stdout
    assert "Traceback" not in r.stderr


def test_missing_password_exits_0_like_the_original() -> None:
    r = run("--no-port-forwarding")
    assert r.returncode == 0
    assert "ERROR - Either password or private key must be set" in r.stdout


def test_bad_private_key_is_a_clean_error_before_device_setup() -> None:
    r = run("--private-key", "not-base62!", "--device-path", "/nonexistent/tun")
    assert r.returncode == 255
    assert "Traceback" not in r.stdout + r.stderr
    # failed on the key, not on the (non-existent) device
    assert "key" in r.stdout.lower() and "virtual" not in r.stdout


def test_usage_errors() -> None:
    r = run("--mode", "bridge")
    assert r.returncode == 1 and "invalid choice" in r.stderr
    r = run("-p", "a", "--key", "b")
    assert r.returncode == 255 and "cannot be used with" in r.stdout


def test_status_without_node(tmp_path: Path) -> None:
    r = run("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 255
    assert "no control socket" in r.stderr and "Traceback" not in r.stderr


def test_external_subcommands_dispatch() -> None:
    r = run("-v", "lab", "--help")
    assert r.returncode == 0 and "up" in r.stdout
    r = run("schema", "--help")
    assert r.returncode == 0
