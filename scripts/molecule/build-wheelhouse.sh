#!/usr/bin/env bash
# The wheelhouse the node and wsproxy roles copy to the containers (they have no network): the project
# wheel and every dependency, built for the containers' Python (Debian 12: CPython 3.11). The wheels are
# reproducible (SOURCE_DATE_EPOCH), so a rebuild from unchanged sources changes nothing on the hosts and
# the idempotence step stays meaningful.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
t0=$(date +%s)
WHEELHOUSE=${WHEELHOUSE:-$MOLECULE_STATE/wheelhouse}
# Must match the containers' interpreter (pydantic-core etc. ship per-CPython wheels).
if [ -z "${WHEEL_PYTHON:-}" ]; then
    WHEEL_PYTHON=python3.11
    [ -x "$REPO_ROOT/.venv/bin/python" ] && WHEEL_PYTHON="$REPO_ROOT/.venv/bin/python"
fi
"$WHEEL_PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "build-wheelhouse: need CPython 3.11 (the containers' Python), got $WHEEL_PYTHON"; exit 1; }
mkdir -p "$WHEELHOUSE"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# Build into a scratch dir, then replace only what differs: unchanged wheels keep their mtime.
log="$MOLECULE_STATE/build-wheelhouse.log"
if ! SOURCE_DATE_EPOCH=315532800 "$WHEEL_PYTHON" -m pip wheel --quiet --disable-pip-version-check \
        --wheel-dir "$build" "$REPO_ROOT" >"$log" 2>&1; then
    tail -30 "$log"
    exit 1
fi
changed=0
for w in "$build"/*.whl; do
    dest="$WHEELHOUSE/$(basename "$w")"
    cmp -s "$w" "$dest" || { cp "$w" "$dest"; changed=$((changed + 1)); }
done
# Drop wheels no longer needed (an old project version, a replaced dependency).
for w in "$WHEELHOUSE"/*.whl; do
    [ -e "$build/$(basename "$w")" ] || { rm -f "$w"; changed=$((changed + 1)); }
done
# The roles copy <wheelhouse>.tar (one transfer per host); site.yml packs it only when it builds the
# wheels itself, so pack it here whenever the wheels changed, the same reproducible way as site.yml.
if ((changed)) || [ ! -s "$WHEELHOUSE.tar" ]; then
    tar --sort=name --mtime=@315532800 --owner=0 --group=0 --numeric-owner \
        -cf "$WHEELHOUSE.tar.tmp" -C "$WHEELHOUSE" .
    mv "$WHEELHOUSE.tar.tmp" "$WHEELHOUSE.tar"
fi
stage wheelhouse built $(( $(date +%s) - t0 )) "$(ls "$WHEELHOUSE" | wc -l) wheels ($changed new) in $WHEELHOUSE"
