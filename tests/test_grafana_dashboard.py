"""The Grafana dashboard of the collection (ansible/files/grafana/vpncloud.json) queries only metric
families the daemon exports (taken from a scrape of a node on the virtual network), covers what a
fleet operator looks at first, and every query is valid PromQL (promtool, when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_metrics import pair, scrape

from vpncloud.daemon.metrics import FAMILIES

DASHBOARD = Path(__file__).resolve().parents[1] / "ansible" / "files" / "grafana" / "vpncloud.json"
METRIC = re.compile(r"\bvpncloud_[a-z0-9_]+\b")


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def expressions(data: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in data["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in data["templating"]["list"] if "definition" in v]
    return exprs


def test_every_query_names_only_exported_metrics() -> None:
    # FAMILIES is exactly what a real daemon's scrape holds (test_metrics_netns checks that); the
    # node's own status lacks what the daemon adds to it (uptime), so that one comes from FAMILIES
    h, a, _b = pair(64)
    exported = set(scrape(lambda: a.node.status(h.now))) | {"vpncloud_uptime_seconds"}
    exprs = expressions(dashboard())
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used, "no vpncloud metric in the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    assert used <= set(FAMILIES), f"not declared: {sorted(used - set(FAMILIES))}"
    for expr in exprs:
        assert METRIC.search(expr), f"query without a vpncloud metric: {expr}"


def test_dashboard_covers_throughput_handshakes_drops_and_peers() -> None:
    data = dashboard()
    by_title = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in data["panels"]}
    assert "vpncloud_peer_traffic_bytes_total" in by_title["Throughput per peer"]
    assert "by (instance, peer)" in by_title["Throughput per peer"]
    assert "vpncloud_handshakes_total" in by_title["Handshakes by result"]
    assert "by (instance, reason)" in by_title["Drops by reason"]
    assert "vpncloud_peers_connected" in by_title["Peers up (per node)"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; scripts/setup.sh installs it)")
    data = dashboard()
    grafana_vars = {"$__rate_interval": "5m", "$instance": ".*"}
    rules = []
    for i, expr in enumerate(t["expr"] for p in data["panels"] for t in p.get("targets", [])):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
