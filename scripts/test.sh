#!/usr/bin/env bash
# The project's test command (README and .ci/run both call exactly this):
#   1. lint and type checks (ruff; mypy --strict on the core, simulator, orchestrator and lab),
#   2. the pytest suite: unit, property, vector, simulator and real network-namespace tests (root),
#   3. the Ansible collection as real collections are checked: ansible-doc on every module, filter and
#      role, ansible-test sanity, ansible-lint over the molecule scenarios,
#   4. the molecule scenarios: multi-node meshes deployed by the Ansible roles in podman containers.
# Extra arguments go to pytest. VPNCLOUD_SKIP_MOLECULE=1 skips steps 3 and 4.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=stage.sh
. scripts/stage.sh

t0=$(date +%s)
{ .venv/bin/ruff check vpncloud tests bench fuzz && .venv/bin/ruff format --check vpncloud tests bench fuzz \
    && .venv/bin/mypy; } || { stage lint failed $(( $(date +%s) - t0 )); exit 1; }
stage lint ran $(( $(date +%s) - t0 )) "ruff, ruff format, mypy --strict"

t0=$(date +%s)
.venv/bin/python -m pytest "$@"
pytest_rc=$?
stage pytest "$( ((pytest_rc == 0)) && echo ran || echo failed)" $(( $(date +%s) - t0 )) "exit $pytest_rc"

ansible_rc=0
molecule_rc=0
if [[ "${VPNCLOUD_SKIP_MOLECULE:-0}" != 1 ]]; then
    trap 'bash scripts/molecule/cleanup.sh >/dev/null 2>&1' EXIT
    t0=$(date +%s)
    bash scripts/molecule/sanity.sh && bash scripts/molecule/lint.sh
    ansible_rc=$?
    stage collection-checks "$( ((ansible_rc == 0)) && echo ran || echo failed)" $(( $(date +%s) - t0 )) \
        "ansible-doc, ansible-test sanity, ansible-lint"
    t0=$(date +%s)
    bash scripts/molecule/run-scenarios.sh
    molecule_rc=$?
    stage molecule "$( ((molecule_rc == 0)) && echo ran || echo failed)" $(( $(date +%s) - t0 )) "scenarios"
fi
((pytest_rc == 0 && ansible_rc == 0 && molecule_rc == 0))
