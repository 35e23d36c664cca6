#!/usr/bin/env bash
# What real collections run in CI on the vpncloud.mesh collection (ansible/), offline:
#   1. ansible-doc on every module, filter and role: each must render, with no warning;
#   2. ansible-test sanity --local on a copy laid out as ansible_collections/vpncloud/mesh.
# Needs setup-venv.sh (molecule venv, sanity-venv). ansible-test installs each sanity test's pinned
# requirements into venvs of its own under $MOLECULE_STATE/ansible-test-home (fresh state, fresh venvs).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
t0=$(date +%s)
export ANSIBLE_COLLECTIONS_PATH="$MOLECULE_STATE/collections" ANSIBLE_NOCOLOR=1 NO_COLOR=1
export ANSIBLE_LOCAL_TEMP="$MOLECULE_STATE/ansible-tmp"
link_collection
doc="$MOLECULE_STATE/venv/bin/ansible-doc"
log="$MOLECULE_STATE/logs/sanity.log"
mkdir -p "$MOLECULE_STATE/logs"
: >"$log"

# 1. ansible-doc: list what the collection has, then render each; an empty list is a failure too.
checked=0
for type in module filter role; do
    names=$("$doc" -t "$type" -l vpncloud.mesh --json 2>>"$log" \
        | "$MOLECULE_STATE/venv/bin/python" -c 'import json,sys; print("\n".join(sorted(json.load(sys.stdin))))')
    [ -n "$names" ] || { echo "sanity: ansible-doc lists no $type in vpncloud.mesh"; exit 1; }
    for name in $names; do
        # ansible-core 2.21 warns about its own internal _protomatter collection: not ours to fix
        if ! out=$("$doc" -t "$type" "$name" 2>&1 >/dev/null) \
                || grep -v _protomatter <<<"$out" | grep -qE '\[(WARNING|ERROR)\]|ERROR!'; then
            echo "sanity: ansible-doc -t $type $name failed:"; echo "$out" | grep -v Cryptography | head -20
            exit 1
        fi
        checked=$((checked + 1))
    done
done
echo "sanity: ansible-doc rendered $checked modules, filters and roles of vpncloud.mesh"

# 2. ansible-test needs the collection at .../ansible_collections/<namespace>/<name> and its cwd there.
tree="$MOLECULE_STATE/sanity/ansible_collections/vpncloud/mesh"
rm -rf "$MOLECULE_STATE/sanity"
mkdir -p "$tree"
cp -a "$REPO_ROOT/ansible/." "$tree/"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
# ansible-test bootstraps pip into each test's venv with a get-pip script it downloads from a host this
# machine cannot reach; it takes a cached copy instead. Ours does the same job with the interpreter's
# own ensurepip and pip from the package index.
home="$MOLECULE_STATE/ansible-test-home"
mkdir -p "$home/.ansible/test/cache"
pipver=$("$MOLECULE_STATE/sanity-venv/bin/python" - <<'PY'
import re, pathlib, ansible_test
text = (pathlib.Path(ansible_test.__file__).parent / "_internal/python_requirements.py").read_text()
print(re.search(r"\bpip='([0-9.]+)'", text).group(1).replace(".", "_"))
PY
)
cat >"$home/.ansible/test/cache/get_pip_$pipver.py" <<'PY'
"""Stands in for get-pip.py: pip from ensurepip, then the requested packages from the index."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel", "--disable-pip-version-check")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])
PY
pyver=$("$MOLECULE_STATE/sanity-venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cd "$tree"
if HOME="$home" "$MOLECULE_STATE/sanity-venv/bin/ansible-test" sanity --local --python "$pyver" --color no \
        >>"$log" 2>&1; then
    tests=$(grep -c '^Running sanity test' "$log" || true)
    echo "sanity: ansible-test sanity passed ($tests tests on Python $pyver; log $log); $(( $(date +%s) - t0 )) s"
else
    echo "sanity: ansible-test sanity FAILED:"
    grep -E '^(ERROR|FATAL)' "$log" | head -30
    exit 1
fi
