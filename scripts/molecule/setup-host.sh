#!/usr/bin/env bash
# Install and configure rootful podman on Debian 12 (as root) for the molecule scenarios. Idempotent.
#
# Why /etc/containers/containers.conf is written:
#   * root here may lack CAP_SYS_RESOURCE, so podman's default rlimits (nofile/nproc = 1048576) fail
#     ("setrlimit RLIMIT_NOFILE: Operation not permitted"): pin them to what the host can hand out;
#     conmon runs with RLIMIT_NPROC hard = 32768, so nproc is capped there.
#   * hybrid cgroups (v1 controllers + cgroup2 at /sys/fs/cgroup/unified): crun refuses them, runc works.
#   * no systemd as PID 1 on the host: cgroupfs manager and the file events logger.
#   * Debian's podman also ships a CNI conflist: say netavark explicitly.
set -euo pipefail
# shellcheck source=../stage.sh
. "$(dirname "$0")/../stage.sh"
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)

packages=(podman runc conmon netavark aardvark-dns iptables uidmap debootstrap zstd)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-host: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
how=reused; ((${#missing[@]})) && how=built

nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi

mkdir -p /etc/containers
conf=$(cat <<CONF
# written by vpncloud scripts/molecule/setup-host.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
)
if [ "$(cat /etc/containers/containers.conf 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > /etc/containers/containers.conf
fi

podman info --format 'setup-host: runtime={{.Host.OCIRuntime.Name}} cgroups={{.Host.CgroupManager}}/{{.Host.CgroupsVersion}} net={{.Host.NetworkBackend}}'
stage podman-host "$how" $(( $(date +%s) - t0 )) "${missing[*]:-podman and tools already installed}"
