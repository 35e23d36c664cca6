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
