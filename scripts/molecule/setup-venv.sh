#!/usr/bin/env bash
# The controller side of the molecule scenarios, all under $MOLECULE_STATE (outside the repository):
#   venv/         ansible-core + molecule + molecule-plugins[podman] (+ ansible-lint), pinned
#   sanity-venv/  ansible-test (same ansible-core) + the sanity tests' own pinned requirements
#   collections/  containers.podman, ansible.posix, community.general ... taken out of the `ansible`
#                 wheel from PyPI (Galaxy is unreachable); point ANSIBLE_COLLECTIONS_PATH here
# Idempotent: a venv whose pins match is kept.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
t0=$(date +%s)

# ansible-core >= 2.20 needs Python >= 3.12: use a 3.12 when the machine has one (pyenv), else python3.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    for p in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
        # a pyenv shim exists even when that version is not selected: run it to be sure
        if "$p" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
            PYTHON=$("$p" -c 'import sys; print(sys.executable)'); break
        fi
    done
fi
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$(printf '%s\n' "$pyver" 3.12 | sort -V | head -1)" = 3.12 ]; then
    PINS=(ansible-core==2.21.5 molecule==26.10.0 'molecule-plugins[podman]==26.10.12' ansible-lint==26.1.1)
    ANSIBLE_BUNDLE=ansible==14.5.0
else
    PINS=(ansible-core==2.19.14 molecule==26.10.0 'molecule-plugins[podman]==26.10.12' ansible-lint==26.1.1)
    ANSIBLE_BUNDLE=ansible==12.3.0
fi

venv="$MOLECULE_STATE/venv"
stamp="$venv/.pins"
want="$PYTHON ${PINS[*]}"
mkdir -p "$MOLECULE_STATE"
if [ ! -x "$venv/bin/molecule" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" >"$MOLECULE_STATE/molecule-venv.log" 2>&1 \
        || { tail -30 "$MOLECULE_STATE/molecule-venv.log"; exit 1; }
    printf '%s' "$want" > "$stamp"
    stage molecule-venv built $(( $(date +%s) - t0 )) "$venv: ${PINS[*]} on Python $pyver"
else
    stage molecule-venv reused $(( $(date +%s) - t0 )) "$venv"
fi
t0=$(date +%s)

# ansible-test, for `ansible-test sanity` on the collection (scripts/molecule/sanity.sh). Its own venv:
# the sanity tests pin pylint, yamllint, voluptuous ... which must not move ansible-lint's dependencies.
svenv="$MOLECULE_STATE/sanity-venv"
core_pin=${PINS[0]}
if [ ! -x "$svenv/bin/ansible-test" ] || [ "$(cat "$svenv/.pins" 2>/dev/null)" != "$PYTHON $core_pin" ]; then
    rm -rf "$svenv"
    "$PYTHON" -m venv "$svenv"
    "$svenv/bin/pip" install -q --disable-pip-version-check "$core_pin" >"$MOLECULE_STATE/sanity-venv.log" 2>&1 \
        || { tail -30 "$MOLECULE_STATE/sanity-venv.log"; exit 1; }
    reqs=("$svenv"/lib/python*/site-packages/ansible_test/_data/requirements/sanity.*.txt)
    "$svenv/bin/pip" install -q --disable-pip-version-check "${reqs[@]/#/--requirement=}" \
        >>"$MOLECULE_STATE/sanity-venv.log" 2>&1 || { tail -30 "$MOLECULE_STATE/sanity-venv.log"; exit 1; }
    printf '%s' "$PYTHON $core_pin" > "$svenv/.pins"
    stage sanity-venv built $(( $(date +%s) - t0 )) "$svenv: $core_pin and the sanity tests' requirements"
else
    stage sanity-venv reused $(( $(date +%s) - t0 )) "$svenv"
fi
t0=$(date +%s)

# Collections the podman driver and the roles' tests use, from the `ansible` wheel (no Galaxy).
coll="$MOLECULE_STATE/collections"
collstamp="$coll/.bundle"
if [ "$(cat "$collstamp" 2>/dev/null)" != "$ANSIBLE_BUNDLE" ]; then
    rm -rf "$coll"
    dl=$(mktemp -d)
    trap 'rm -rf "$dl"' EXIT
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$dl" "$ANSIBLE_BUNDLE"
    "$venv/bin/python" - "$dl" "$coll" <<'PY'
import glob
import json
import sys
import zipfile

dl, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(dl + "/ansible-*.whl")[0]
want = ("containers/podman/", "ansible/posix/", "community/general/", "ansible/utils/")
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        rel = info.filename.removeprefix("ansible_collections/")
        if info.filename.startswith("ansible_collections/") and rel.startswith(want):
            z.extract(info, dest)
for w in want:
    with open(f"{dest}/ansible_collections/{w}MANIFEST.json") as f:
        m = json.load(f)["collection_info"]
    print(f"setup-venv: {m['namespace']}.{m['name']} {m['version']}")
PY
    printf '%s' "$ANSIBLE_BUNDLE" > "$collstamp"
    stage collections built $(( $(date +%s) - t0 )) "from the $ANSIBLE_BUNDLE wheel"
else
    stage collections reused $(( $(date +%s) - t0 )) "$coll"
fi
t0=$(date +%s)
# The collection under test, straight from the working tree (ansible/ is the vpncloud.mesh collection).
# Only the link (not use_this_checkout): with the checkout on PYTHONPATH, the import check below would
# pass and skip installing the project's dependencies into the venv.
link_collection

# The collection's filters import the project (one renderer for apply and Ansible), so its dependencies
# (pydantic, ...) must be in the controller's venv. Installed editable from this checkout whenever the
# checkout or its pyproject.toml differ from what the venv holds. The check runs isolated (-I, from /):
# a plain `python -c` from the repository root imports ./vpncloud from the current directory and
# would pass without pydantic installed, which once hid a missing install on fresh machines.
projstamp="$venv/.project"
want_proj="$REPO_ROOT $(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$projstamp" 2>/dev/null)" != "$want_proj" ] \
        || ! (cd / && "$venv/bin/python" -I -c 'import vpncloud.mesh, pydantic') >/dev/null 2>&1; then
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$REPO_ROOT" >"$MOLECULE_STATE/setup-venv.log" 2>&1 \
        || { tail -30 "$MOLECULE_STATE/setup-venv.log"; exit 1; }
    printf '%s' "$want_proj" > "$projstamp"
    how=built
else
    how=reused
fi
# Proof, not hope: the controller imports the project and its dependencies from anywhere.
(cd / && "$venv/bin/python" -I -c 'import vpncloud.mesh.keystore, pydantic') \
    || { echo "setup-venv: the controller venv cannot import vpncloud.mesh (see $MOLECULE_STATE/setup-venv.log)"; exit 1; }
stage controller-project "$how" $(( $(date +%s) - t0 )) "vpncloud (editable, $REPO_ROOT) in the molecule venv; $("$venv/bin/ansible" --version 2>/dev/null | sed -n 1p)"
