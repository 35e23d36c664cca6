# Sourced by the scripts in scripts/molecule/: one place for paths, names and pinned versions.
# shellcheck shell=bash
# State outside the repository: the molecule venv, collections, the rootfs tarball, the wheelhouse, logs.
MOLECULE_STATE=${MOLECULE_STATE:-/var/tmp/vpncloud-molecule}
# The node image, built offline by build-image.sh (no registry is reachable).
MOLECULE_IMAGE=${MOLECULE_IMAGE:-localhost/vpncloud-node:bookworm}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Every container and network the scenarios make carries this prefix, so cleanup.sh can find them.
MOLECULE_PREFIX=vcm
export MOLECULE_STATE MOLECULE_IMAGE REPO_ROOT MOLECULE_PREFIX
# shellcheck source=../stage.sh
. "$REPO_ROOT/scripts/stage.sh"

# Make this checkout the one under test: the shared collection link and the controller's `vpncloud`
# package (the collection's filters import it). Both may point at another clone: setup-venv.sh links
# and installs (editable) from the clone it ran in, CI's clone is deleted afterwards, and a link or an
# import from there would test that clone's roles and renderer, or fail.
link_collection() {
    local coll=$MOLECULE_STATE/collections/ansible_collections/vpncloud
    mkdir -p "$coll"
    ln -sfn "$REPO_ROOT/ansible" "$coll/mesh"
}
use_this_checkout() {
    link_collection
    export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}
