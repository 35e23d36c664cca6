#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) for running and testing this project:
# system packages (iproute2, ping, iptables, systemd-analyze...), then a virtualenv in .venv with the
# project and its development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=stage.sh
. scripts/stage.sh

# prometheus: only for promtool (the metrics tests lint the exposition and the dashboard queries);
# graphviz: `dot` renders `vpncloud lab status --dot` as SVG; gcc + libssl-dev: the C kernels
# (vpncloud/fastpath, optional: without them the Python twin runs); clang: scripts/fuzz.sh
APT_PACKAGES=(iproute2 iputils-ping iptables procps kmod systemd tcpdump iperf3 conntrack miniupnpd-iptables python3-venv
    prometheus graphviz gcc libssl-dev clang)

t0=$(date +%s)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # miniupnpd is only a test peer (a UPnP gateway inside a namespace): never start it on the host.
    echo "miniupnpd miniupnpd/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    stage debian-packages built $(( $(date +%s) - t0 )) "${missing[*]}"
else
    stage debian-packages reused $(( $(date +%s) - t0 )) "all ${#APT_PACKAGES[@]} installed"
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
t0=$(date +%s)
how=reused
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
    how=built
fi
# pip's own output goes to a log: the machine's pip settings add a warning per package otherwise
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } \
        >.venv/setup.log 2>&1; then
    tail -30 .venv/setup.log
    exit 1
fi
stage venv "$how" $(( $(date +%s) - t0 )) ".venv: the project (editable) and its dev tools, $("$PYTHON" --version)"

# Molecule: rootful podman, the offline-built container image and molecule's own virtualenv
# (VPNCLOUD_SKIP_MOLECULE=1 skips this on machines that only run the lab).
if [[ "${VPNCLOUD_SKIP_MOLECULE:-0}" != 1 ]]; then
    bash scripts/molecule/setup-host.sh
    bash scripts/molecule/setup-venv.sh
    bash scripts/molecule/build-image.sh
fi
echo "setup: done ($(.venv/bin/python --version), vpncloud at .venv/bin/vpncloud)"
