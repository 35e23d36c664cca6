#!/usr/bin/env bash
# ansible-lint (production profile) over the molecule scenarios, with the collection under test resolvable.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
export ANSIBLE_COLLECTIONS_PATH="$MOLECULE_STATE/collections" NO_COLOR=1 PY_COLORS=0
use_this_checkout
cd "$REPO_ROOT"
"$MOLECULE_STATE/venv/bin/ansible-lint" --offline --profile production --nocolor molecule/ 2>&1 \
    | grep -v -e tracemalloc -e 'duplicate mapping key' -e 'display.warning' -e 'PATH altered'
