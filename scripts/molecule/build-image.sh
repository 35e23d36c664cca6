#!/usr/bin/env bash
# Build the node image for the molecule scenarios WITHOUT a container registry: debootstrap from Debian's
# archive, then `podman import`. Everything the roles need is baked in, so converge needs no network.
#
# Does nothing when the image already exists with the same package list (label vpncloud.pkgs). Keeps a
# zstd rootfs tarball in $MOLECULE_STATE, so a wiped podman store re-imports in seconds.
# Env: FORCE=1 rebuilds; EXTRA_PKGS=a,b adds Debian packages; MIRROR overrides the archive.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# systemd as PID 1; python3 + venv for ansible and the daemon's virtualenv; python3-apt so that
# package-facts/apt tasks work offline; python3-packaging for ansible.builtin.pip; iproute2/iptables/ping for the VPN, bridges, NAT and checks.
PKGS="python3,python3-venv,python3-apt,python3-packaging,systemd,systemd-sysv,dbus,iproute2,iputils-ping,iptables,procps,kmod,tcpdump,netcat-openbsd,ca-certificates,sudo${EXTRA_PKGS:+,$EXTRA_PKGS}"
# IMAGE_REV: bump when the rootfs changes beyond the package list, so cached tarballs are rebuilt
IMAGE_REV=2
key=$(printf '%s %s %s' "$SUITE" "$PKGS" "$IMAGE_REV" | sha256sum | cut -c1-12)
tarball="$MOLECULE_STATE/rootfs-$SUITE-$key.tar.zst"
mkdir -p "$MOLECULE_STATE"

if [ -z "${FORCE:-}" ] && podman image exists "$MOLECULE_IMAGE" \
   && [ "$(podman image inspect -f '{{index .Labels "vpncloud.pkgs"}}' "$MOLECULE_IMAGE")" = "$key" ]; then
    stage image reused 0 "$MOLECULE_IMAGE up to date ($key)"
    exit 0
fi

t0=$(date +%s)
from="cached rootfs tarball $tarball"
if [ -n "${FORCE:-}" ] || [ ! -s "$tarball" ]; then
    from="debootstrap $SUITE from $MIRROR"
    root="$MOLECULE_STATE/rootfs.$$"
    trap 'rm -rf "$root"' EXIT
    rm -rf "$root"
    if ! debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$root" "$MIRROR" \
            >"$MOLECULE_STATE/debootstrap.log" 2>&1; then
        tail -20 "$MOLECULE_STATE/debootstrap.log"
        exit 1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
           "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    # systemd makes a fresh machine-id per container; no getty on a console that does not exist
    : > "$root/etc/machine-id"
    rm -f "$root"/etc/systemd/system/getty.target.wants/*
    # Debian's daily timers (dpkg-db-backup writes /var/backups at midnight, apt-daily, fstrim...) would
    # change the containers under a scenario that compares file systems or checks idempotence.
    rm -f "$root"/etc/systemd/system/timers.target.wants/*
    tar -C "$root" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    # tarballs of other package lists are stale now
    find "$MOLECULE_STATE" -maxdepth 1 -name "rootfs-$SUITE-*.tar.zst" ! -path "$tarball" -delete
    echo "build-image: debootstrap+tar $(( $(date +%s) - t0 )) s"
fi

t1=$(date +%s)
zstd -q -d -c "$tarball" | podman import --quiet \
    --change 'CMD ["/sbin/init"]' \
    --change 'ENV container=podman' \
    --change "LABEL vpncloud.pkgs=$key" \
    - "$MOLECULE_IMAGE" >/dev/null
echo "build-image: import $(( $(date +%s) - t1 )) s; tarball $(du -h "$tarball" | cut -f1); $MOLECULE_IMAGE"
stage image built $(( $(date +%s) - t0 )) "$MOLECULE_IMAGE by $from"
