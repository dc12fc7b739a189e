#!/usr/bin/env bash
# Checks systemd/hottask-sync.service with `systemd-analyze verify`.
#
# Usage: .ci/verify-unit.sh [HOTTASK_SYNC_BIN [UNIT_FILE]]
#   HOTTASK_SYNC_BIN  the installed console script (default: `command -v hottask-sync`)
#   UNIT_FILE         the unit to check (default: systemd/hottask-sync.service of this repo)
#
# `systemd-analyze verify` exits 0 even on a misspelled key or an unparsable value (systemd
# ignores such lines with a warning), so this script fails whenever it prints anything at
# all, and shows what it printed.
#
# The unit is checked as a temporary copy whose ExecStart= points at HOTTASK_SYNC_BIN (the
# real /usr/local/bin path does not exist on a CI runner) and whose ExecReload= names a
# `kill` that exists here. The copy is verified alone: SYSTEMD_UNIT_PATH holds only its
# directory and --recursive-errors=no skips the units it depends on, so warnings about the
# host's own unit files cannot make the check flaky. Missing users and /etc paths are not
# reported by verify (they are only looked up when the service starts).
#
# Exit status: 0 clean (or systemd-analyze missing outside CI), 1 otherwise.
# With $CI set, a missing systemd-analyze is a failure: CI must really run this check.
set -euo pipefail

script=${BASH_SOURCE[0]}
[[ $script == */* ]] || script=./$script
repo=$(cd "${script%/*}/.." && pwd)
bin=${1:-}
unit=${2:-$repo/systemd/hottask-sync.service}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [[ -n ${CI:-} ]]; then
        echo "verify-unit: systemd-analyze not found, and CI is set: install systemd to run this check" >&2
        exit 1
    fi
    echo "verify-unit: systemd-analyze not found: unit file NOT checked (skipped)" >&2
    exit 0
fi

if [[ -z $bin ]]; then
    if ! bin=$(command -v hottask-sync); then
        echo "verify-unit: hottask-sync is not installed: install the package or pass its path as \$1" >&2
        exit 1
    fi
fi
# ExecStart= needs an absolute path.
if [[ $bin != /* ]]; then
    bin=$PWD/$bin
fi
if [[ ! -f $unit ]]; then
    echo "verify-unit: no unit file at $unit" >&2
    exit 1
fi

kill_bin=/bin/kill
if [[ ! -x $kill_bin ]]; then
    if ! kill_bin=$(type -P kill); then
        echo "verify-unit: no kill executable found (needed by ExecReload=)" >&2
        exit 1
    fi
fi

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
copy=$tmp/hottask-sync.service

# Replace the program of ExecStart= and ExecReload= (first word after "="), keep the rest.
BIN=$bin KILL=$kill_bin awk '
    match($0, /^ExecStart=[^ \t]+/)  { $0 = "ExecStart=" ENVIRON["BIN"] substr($0, RLENGTH + 1) }
    match($0, /^ExecReload=[^ \t]+/) { $0 = "ExecReload=" ENVIRON["KILL"] substr($0, RLENGTH + 1) }
    { print }
' "$unit" >"$copy"

status=0
output=$(
    SYSTEMD_UNIT_PATH=$tmp SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat \
        systemd-analyze verify --man=no --generators=no --recursive-errors=no "$copy" 2>&1
) || status=$?

if [[ -n $output || $status -ne 0 ]]; then
    echo "verify-unit: $unit: systemd-analyze verify reported problems (exit status $status):" >&2
    # Name the real file, not the temporary copy.
    printf '%s\n' "${output//"$copy"/"$unit"}" >&2
    exit 1
fi
echo "verify-unit: $unit: OK"
