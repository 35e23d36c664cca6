"""Idle memory (issue 21): heavy modules a configuration does not use are imported only when used.

No memory thresholds here (bench/rss.py measures them); these tests fail when someone adds an eager
import of numpy, pyroute2, PyYAML or another of ``vpncloud.lazy.OPTIONAL_MODULES`` back to the
daemon's start-up path, and they run the rtnetlink client that replaced pyroute2 for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import c_kernels
from reach_support import wait_for
from test_daemon_netns import PASSWORD, VNode, full_mesh, ping_matrix

from vpncloud.lazy import OPTIONAL_MODULES, TWIN_MODULES, LazyModule, lazy

PY = sys.executable


def run_python(code: str, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter (nothing imported by pytest) and parse its JSON output."""
    out = subprocess.run(
        [PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True, env=env, timeout=60
    )
    return json.loads(out.stdout)


def test_lazy_module_imports_at_first_attribute_and_caches_it() -> None:
    result = run_python("""
        import json, sys
        from vpncloud.lazy import LazyModule
        m = LazyModule("colorsys")
        before = "colorsys" in sys.modules
        value = m.rgb_to_hsv(1.0, 0.0, 0.0)
        print(json.dumps([before, "colorsys" in sys.modules, value, "rgb_to_hsv" in vars(m)]))
    """)
    assert result == [False, True, [0.0, 1.0, 1.0], True]


def test_lazy_of_a_missing_module_is_none() -> None:
    assert lazy("vpncloud_no_such_module") is None
    assert isinstance(lazy("colorsys"), LazyModule)
    with pytest.raises(AttributeError):
        _ = LazyModule("colorsys").no_such_function


@pytest.mark.parametrize("pure", ["0", "1"])
def test_daemon_start_up_imports_no_optional_module(pure: str) -> None:
    """Everything ``vpncloud`` (the daemon) imports before it opens a device."""
    loaded = run_python(
        """
        import json, sys
        import vpncloud.cli, vpncloud.daemon.loop, vpncloud.daemon.device, vpncloud.fastpath.offload
        import vpncloud.core.bulk, vpncloud.config, vpncloud.daemon.security_file
        print(json.dumps([m for m in sys.modules if m.split(".")[0] in OPTIONAL]))
        """.replace("OPTIONAL", repr(OPTIONAL_MODULES)),
        env={"VPNCLOUD_PURE_PYTHON": pure, "PATH": "/usr/bin:/bin"},
    )
    assert loaded == []


def test_primitives_with_c_kernels_never_import_cryptography() -> None:
    """The handshake's Ed25519 and X25519 and the AEAD run on the C kernels' libcrypto; the Python
    twin (VPNCLOUD_PURE_PYTHON=1) is the one that brings cryptography in."""
    if c_kernels() is None:
        pytest.skip("C kernels not built")
    code = """
        import json, sys
        from vpncloud.core import primitives as p
        from vpncloud.core.errors import CryptoError
        seed, key = bytes(range(32)), p.X25519Key(bytes(32))
        ok = p.ed25519_verify(p.ed25519_public_key(seed), p.ed25519_sign(seed, b"m"), b"m")
        try:
            key.exchange(bytes(32))
            small = "accepted"
        except CryptoError:
            small = "refused"
        aead = p.Aead(p.Algorithm.AES256, bytes(32))
        plain = aead.open(bytes(12), aead.seal(bytes(12), b"x"))
        print(json.dumps([ok, small, plain.decode(), "cryptography" in sys.modules]))
    """
    c = run_python(code, env={"VPNCLOUD_PURE_PYTHON": "0", "PATH": "/usr/bin:/bin"})
    py = run_python(code, env={"VPNCLOUD_PURE_PYTHON": "1", "PATH": "/usr/bin:/bin"})
    assert c == [True, "refused", "x", False]
    assert py == [True, "refused", "x", True]


def test_numpy_is_imported_by_the_first_batch_that_uses_it() -> None:
    """The coalescing check of a run of equal-sized TCP segments is what brings numpy in."""
    result = run_python("""
        import json, struct, sys
        from vpncloud.fastpath import offload
        idle = "numpy" in sys.modules
        def seg(seq):
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + 100, 1, 0x4000, 64, 6, 0,
                             bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
            tcp = struct.pack("!HHLLBBHHH", 1000, 2000, seq, 0, 5 << 4, 0x10, 1000, 0, 0)
            return ip + tcp + bytes(100)
        writes = offload.coalesce([seg(1 + 100 * i) for i in range(8)])
        print(json.dumps([idle, "numpy" in sys.modules, len(writes)]))
    """)
    assert result == [False, True, 1]


# --- real daemons and the real kernel -------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("kernels", ["c", "python"])
def test_idle_daemons_hold_no_optional_module(lan3: Any, tmp_path: Path, kernels: str) -> None:
    """Two TUN router-mode daemons: connected, routes and pings work, and ``status --json`` says
    that neither numpy, pyroute2, PyYAML nor any other optional module was imported, and that only
    the Python twin of the kernels imported cryptography (the handshake ran in both)."""
    if kernels == "c" and c_kernels() is None:
        pytest.skip("C kernels not built")
    env = {"VPNCLOUD_PURE_PYTHON": "1" if kernels == "python" else "0"}
    nodes = []
    for i, name in enumerate("ab", start=1):
        args = ["-m", "router", "-p", PASSWORD, "--ip", f"10.100.0.{i}/24", "--claim", f"10.111.{i}.0/24"]
        if name == "b":
            args += ["-c", f"{lan3.v4['a']}:3210"]
        nodes.append(VNode(lan3.topo, lan3.nodes[name], name, tmp_path, args, env=env))
    full_mesh(nodes)
    ping_matrix([(lan3.nodes[x], f"10.100.0.{i}") for i, x in enumerate("ab", start=1)])
    # the peer's claim became a kernel route through the rtnetlink client
    wait_for(
        lambda: "10.111.2.0/24" in lan3.nodes["a"].ip("route", "show", "dev", "vpncloud0").stdout,
        20,
        interval=0.1,
        what="a's route to b's claim",
    )
    for n in nodes:
        st = n.status()
        assert st is not None
        assert st["dataplane"]["kernels"] == kernels
        assert st["memory"]["optional_modules"] == []
        assert st["memory"]["twin_modules"] == ([] if kernels == "c" else list(TWIN_MODULES))
        assert 0 < st["memory"]["vm_rss_kb"] <= st["memory"]["vm_hwm_kb"]
        assert "Traceback" not in n.log_text()


NETLINK_SCRIPT = """
    import errno, json
    from vpncloud.daemon.netlink import NetlinkError, Rtnl
    out = {}
    with Rtnl() as nl:
        nl.link_set("d0", mtu=1300, up=True)
        nl.addr_add("d0", "10.77.0.1", 24)
        nl.addr_add("d0", "10.77.1.1", 24)
        out["addrs"] = nl.ipv4_addresses("d0")
        nl.route("replace", "10.78.0.0/16", "d0")
        nl.route("replace", "10.78.0.0/16", "d0")  # replace twice: no EEXIST
        nl.route("replace", "fd78::/64", "d0")
        out["mtu"] = int(open("/sys/class/net/d0/mtu").read())
        out["up"] = bool(int(open("/sys/class/net/d0/flags").read(), 16) & 1)
        for name, call in [
            ("dup_addr", lambda: nl.addr_add("d0", "10.77.0.1", 24)),
            ("no_dev", lambda: nl.link_set("nosuchdev", up=True)),
            ("bad_mtu", lambda: nl.link_set("d0", mtu=10)),
            ("del_missing", lambda: nl.route("del", "10.79.0.0/16", "d0")),
        ]:
            try:
                call()
                out[name] = None
            except NetlinkError as exc:
                out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    print(json.dumps(out))
"""


@pytest.mark.netns
def test_rtnetlink_client_against_the_kernel(topology: Any) -> None:
    ns = topology.namespace("nl")
    ns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ns.link_up("d1")
    out = json.loads(ns.run([PY, "-c", textwrap.dedent(NETLINK_SCRIPT)]).stdout)
    assert out["addrs"] == ["10.77.0.1", "10.77.1.1"]
    assert out["mtu"] == 1300 and out["up"] is True
    assert out["dup_addr"] == "EEXIST"
    assert out["no_dev"] == "ENODEV"
    assert out["bad_mtu"] == "EINVAL"
    assert out["del_missing"] == "ESRCH"
    routes = ns.ip("route", "show", "dev", "d0").stdout
    assert "10.78.0.0/16" in routes
    assert "fd78::/64" in ns.ip("-6", "route", "show", "dev", "d0").stdout
    # and the delete of an installed route removes it
    ns.run([PY, "-c", "from vpncloud.daemon.netlink import Rtnl\nRtnl().route('del', '10.78.0.0/16', 'd0')"])
    assert "10.78.0.0/16" not in ns.ip("route", "show", "dev", "d0").stdout
