"""Secrets never show up in what the software prints or writes for people to read.

Three real daemons in namespaces (private keys on the command line and in a config file, a shared
password in a config file, a beacon password), at ``-v``, with log files, stats files, hooks that dump
their environment, ``status`` (JSON and human) and garbage on the control socket; plus ``vpncloud
plan`` (text and JSON) on a password-mode mesh and a keys-mode mesh. Everything they produce is
collected and searched for every secret in several encodings: zero hits.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket as so
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reach_support import wait_for

from vpncloud.core import base62
from vpncloud.core.identity import genkey_text
from vpncloud.daemon.control import status_or_none
from vpncloud.lab.netns import Netns

pytestmark = pytest.mark.netns

PY = sys.executable
PASSWORD = "Sekret-Pass-7f3a91"
BEACON_PASSWORD = "Beacon-Sekret-55c2"
MESH_PASSWORD = "Mesh-Sekret-d00d42"


def keypair(seed: int) -> tuple[str, str]:
    text = genkey_text(None, random.Random(seed))
    lines = text.splitlines()
    return lines[0].split(": ")[1], lines[1].split(": ")[1]


def variants(secret: str) -> list[str]:
    """The secret as text and in the encodings a leak could take."""
    out = [secret]
    raw = secret.encode()
    try:
        raw = base62.decode_key(secret)
        out.append(raw.hex())
    except Exception:
        out.append(raw.hex())
    out.append(base64.b64encode(raw).decode().rstrip("="))
    out.append(repr(raw)[2:-1][:40])
    return [v for v in out if len(v) >= 8]


def test_no_secret_in_logs_status_stats_hooks_or_plans(lan3: Any, tmp_path: Path) -> None:
    priv_a, pub_a = keypair(1)
    priv_b, pub_b = keypair(2)
    secrets = [PASSWORD, BEACON_PASSWORD, MESH_PASSWORD, priv_a, priv_b]
    v4 = lan3.v4
    outputs: dict[str, str] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {k: v for k, v in os.environ.items() if k not in ("PASSWORD", "PRIVATE_KEY")}

    def start(name: str, ns: Netns, args: list[str]) -> None:
        log = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - the child owns it
        procs[name] = lan3.topo.spawn(
            ns,
            [PY, "-m", "vpncloud", "-v", "--no-port-forwarding",
             "--control-socket", str(tmp_path / f"{name}.sock"),
             "--log-file", str(tmp_path / f"{name}.log"), "--stats-file", str(tmp_path / f"{name}.stats"),
             "--stats-interval", "2", "--hook", f"env > {tmp_path}/{name}.hook.$EVENT.env", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        log.close()

    # a: private key on the command line (visible in ps: documented; here we check our own output)
    start("a", lan3.nodes["a"], ["--private-key", priv_a, "--trusted-key", pub_a, "--trusted-key", pub_b,
                                 "--ip", "10.120.0.1/24", "--beacon-store", str(tmp_path / "beacon.txt"),
                                 "--beacon-password", BEACON_PASSWORD, "--beacon-interval", "1"])  # fmt: skip
    # b: private key in a config file
    cfg_b = tmp_path / "b.net"
    cfg_b.write_text(
        f"crypto:\n  private-key: {priv_b}\n  public-key: {pub_b}\n  trusted-keys: [{pub_a}, {pub_b}]\n"
        f"ip: 10.120.0.2/24\npeers: ['{v4['a']}:3210']\n"
    )
    start("b", lan3.nodes["b"], ["--config", str(cfg_b)])
    # c: shared password in a config file (alone: it cannot talk to key-based nodes)
    cfg_c = tmp_path / "c.net"
    cfg_c.write_text(f"crypto:\n  password: {PASSWORD}\nip: 10.120.0.3/24\npeers: ['{v4['a']}:3210']\n")
    start("c", lan3.nodes["c"], ["--config", str(cfg_c)])

    wait_for(
        lambda: (st := status_or_none(str(tmp_path / "b.sock"))) and st["peers"],
        30,
        interval=0.1,
        what="a and b connected",
    )
    wait_for(lambda: lan3.nodes["b"].ping("10.120.0.1"), 30, interval=0.1, what="ping over the tunnel")
    for name in "abc":
        stats = tmp_path / f"{name}.stats"
        wait_for(
            lambda stats=stats: stats.exists() and stats.read_text(), 30, interval=0.1, what=f"{name} stats"
        )
        sock = str(tmp_path / f"{name}.sock")
        for args in (["status", "--json", "--socket", sock], ["status", "--socket", sock]):
            r = subprocess.run(
                [PY, "-m", "vpncloud", *args], capture_output=True, text=True, timeout=30, env=env
            )
            assert r.returncode == 0, r.stderr
            outputs[f"{name} {' '.join(args[:2])}"] = r.stdout + r.stderr
        # garbage on the control socket: the error replies must not echo secrets either
        for payload in (b'{"cmd": "config"}\n', b'{"cmd": "status", "password": "x"}\n', b"junk\n"):
            s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
            s.connect(sock)
            s.sendall(payload)
            s.shutdown(so.SHUT_WR)
            s.settimeout(5)
            outputs[f"{name} control {payload[:20]!r}"] = s.recv(65536).decode(errors="replace")
            s.close()
    wait_for(lambda: (tmp_path / "beacon.txt").exists(), 30, interval=0.1, what="beacon file")
    # SIGHUP (reload logs the config) and a clean stop (shutdown logging, hooks)
    for name in "abc":
        procs[name].send_signal(1)
    for name in "abc":
        wait_for(lambda name=name: "reload" in (tmp_path / f"{name}.log").read_text().lower(),
                 30, interval=0.1, what=f"{name} reloaded")  # fmt: skip
        procs[name].terminate()
        assert procs[name].wait(timeout=20) == 0

    # plans: password mode and keys mode, text and JSON
    mesh_pw = tmp_path / "pw.yaml"
    mesh_pw.write_text(
        f"mesh: {{name: pw, vpn_network: 10.99.0.0/24, auth: password, password: {MESH_PASSWORD}}}\n"
        "nodes:\n  - {name: a, host: ha, underlay: 10.0.0.1, vpn_address: 10.99.0.1}\n"
        "  - {name: b, host: hb, underlay: 10.0.0.2, vpn_address: 10.99.0.2}\n"
    )
    mesh_keys = tmp_path / "keys.yaml"
    mesh_keys.write_text(mesh_pw.read_text().replace(f", auth: password, password: {MESH_PASSWORD}", "")
                         .replace("name: pw", "name: keys"))  # fmt: skip
    for mesh in (mesh_pw, mesh_keys):
        for extra in ([], ["--json"], ["--no-color"]):
            r = subprocess.run(
                [PY, "-m", "vpncloud", "plan", str(mesh), "--state-dir", str(tmp_path / "state"),
                 "--keystore", str(tmp_path / "keys"), *extra],
                capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
            )  # fmt: skip
            assert r.returncode in (0, 2), r.stdout + r.stderr
            outputs[f"plan {mesh.name} {extra}"] = r.stdout + r.stderr
    # private keys the keystore holds (if plan created any) are secrets too
    for f in (tmp_path / "keys").rglob("*") if (tmp_path / "keys").exists() else []:
        if f.is_file():
            for line in f.read_text(errors="replace").split():
                if len(line) >= 40:
                    secrets.append(line.strip())

    for f in sorted(tmp_path.iterdir()):
        if f.suffix in (".log", ".out", ".stats", ".env", ".txt"):
            outputs[f.name] = f.read_text(errors="replace")
    assert any(f.endswith(".env") for f in outputs), "no hook ran"
    assert len(outputs) >= 25

    hits = [
        (where, v[:6] + "...")
        for where, text in outputs.items()
        for secret in secrets
        for v in variants(secret)
        if v in text
    ]
    assert hits == [], f"secrets found in outputs: {hits}"
    # and the scan works: the config files (not outputs) do contain them
    assert priv_b in cfg_b.read_text() and PASSWORD in cfg_c.read_text()
    json.dumps(outputs)  # all text
