#!/usr/bin/env bash
# Remove what the molecule scenarios made: containers (label owner=molecule) and the scenarios' networks.
# The image and $MOLECULE_STATE (venv, rootfs tarball, wheelhouse) stay cached; --all removes them too.
set -u
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
podman rm -f -t 1 --filter label=owner=molecule >/dev/null 2>&1 || true
for net in $(podman network ls --format '{{.Name}}' 2>/dev/null | grep "^$MOLECULE_PREFIX-" || true); do
    podman network rm -f "$net" >/dev/null 2>&1 || true
done
if [ "${1:-}" = --all ]; then
    podman rmi -f "$MOLECULE_IMAGE" >/dev/null 2>&1 || true
    rm -rf "$MOLECULE_STATE"
fi
left=$(podman ps -a --filter label=owner=molecule --format '{{.Names}}' 2>/dev/null)
echo "cleanup: containers left: ${left:-none}; networks left: $(podman network ls --format '{{.Name}}' | grep "^$MOLECULE_PREFIX-" | tr '\n' ' ' || true)"
