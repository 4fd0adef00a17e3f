#!/usr/bin/env bash
# Print (or --follow) a job's logs, then its status. Exit 0 if it SUCCEEDED, 1 if it FAILED or was STOPPED,
# 3 while it is still PENDING/RUNNING.
#   jobs/logs.sh [--address URL] [--follow] JOB_ID
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FOLLOW=()
while [ $# -gt 0 ]; do
  case "$1" in
    --address) ADDRESS="$2"; shift 2;;
    --follow|-f) FOLLOW=(--follow); shift;;
    -h|--help) sed -n '2,4p' "$0"; exit 0;;
    -*) die "unknown option $1";;
    *) break;;
  esac
done
[ $# -eq 1 ] || die "usage: jobs/logs.sh [--address URL] [--follow] JOB_ID"
"$RAY" job logs --address "$ADDRESS" "${FOLLOW[@]}" "$1"
STATUS=$("$LOCAL_PY" -c 'import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)' "$ADDRESS" "$1" 2>/dev/null || true)
echo "raal: job $1: ${STATUS:-UNKNOWN}"
case "$STATUS" in SUCCEEDED) exit 0;; PENDING|RUNNING) exit 3;; *) exit 1;; esac
