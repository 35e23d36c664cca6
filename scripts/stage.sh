# Sourced by the setup and test scripts: one line per piece built or step run, with its time, so a
# run's log shows what it made from nothing and what it reused. With VPNCLOUD_STAGE_LOG set (.ci/run
# sets it) the lines are also collected there as "piece<TAB>built|reused|ran|failed<TAB>seconds<TAB>what".
# shellcheck shell=bash
stage() {  # stage PIECE built|reused|ran|failed SECONDS WHAT...
    local piece=$1 how=$2 secs=$3
    shift 3
    echo "stage: $piece $how in ${secs} s${*:+ ($*)}"
    if [ -n "${VPNCLOUD_STAGE_LOG:-}" ]; then
        printf '%s\t%s\t%s\t%s\n' "$piece" "$how" "$secs" "$*" >>"$VPNCLOUD_STAGE_LOG"
    fi
}
