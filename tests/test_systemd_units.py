"""The shipped systemd units: ``systemd-analyze verify`` and the properties the issue asks for."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vpncloud

ASSETS = Path(vpncloud.__file__).parent / "assets"
INSTALLED = "/usr/local/bin/vpncloud"
UNITS = ("vpncloud@.service", "vpncloud.target", "vpncloud-wsproxy.service")


def read_unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ASSETS / name).read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name the installed entry point; verify checks that it exists and is executable,
    # so point them at this environment's script for the check.
    script = Path(sys.executable).parent / "vpncloud"
    assert script.exists(), "the vpncloud entry point is not installed in this environment"
    for name in UNITS:
        text = (ASSETS / name).read_text().replace(INSTALLED, str(script))
        (tmp_path / name).write_text(text)
    (tmp_path / "vpncloud@mynet.service").write_text((tmp_path / "vpncloud@.service").read_text())
    r = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "vpncloud@mynet.service"),
            str(tmp_path / "vpncloud.target"),
            str(tmp_path / "vpncloud-wsproxy.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vpncloud" not in r.stderr, r.stderr  # no warnings about our units


def test_instance_unit_properties() -> None:
    u = read_unit("vpncloud@.service")
    svc = u["Service"]
    assert svc["Type"] == "notify"
    assert "--config /etc/vpncloud/%i.net" in svc["ExecStart"]
    assert svc["ExecStart"].startswith(INSTALLED + " ")
    assert "--daemon" not in svc["ExecStart"]  # systemd supervises the process itself
    caps = set(svc["CapabilityBoundingSet"].split())
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_ADMIN" not in caps
    assert caps <= {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"}
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("NoNewPrivileges", "yes")):
        assert svc[key] == value
    assert "/dev/net/tun rw" in (ASSETS / "vpncloud@.service").read_text()
    assert u["Unit"]["PartOf"] == "vpncloud.target"
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_target_and_wsproxy() -> None:
    t = read_unit("vpncloud.target")
    assert t.sections() == ["Unit"] and "all vpncloud@.service instances" in t["Unit"]["Description"]
    w = read_unit("vpncloud-wsproxy.service")
    assert w["Service"]["ExecStart"] == f"{INSTALLED} ws-proxy -l 3210"
    assert set(w["Service"]["CapabilityBoundingSet"].split()) == {"CAP_NET_BIND_SERVICE"}
