#!/usr/bin/env bash
# Stop a running job (its run store keeps every committed round: resubmit with the same run_dir to resume).
#   jobs/stop.sh [--address URL] JOB_ID
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[ "${1:-}" = "--address" ] && { ADDRESS="$2"; shift 2; }
[ $# -eq 1 ] || die "usage: jobs/stop.sh [--address URL] JOB_ID"
exec "$RAY" job stop --address "$ADDRESS" "$1"
