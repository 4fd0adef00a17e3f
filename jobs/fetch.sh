#!/usr/bin/env bash
# Fetch what a job wrote (run store or sweep folder: configs, tables, JSON; no feature shards or weights) and
# render it locally: the HTML report of a run; for a sweep its results table and one report of all its curves.
#   jobs/fetch.sh [--address URL] JOB_ID|RUN_DIR DEST
# A run dir on the head's own disk (not S3) is reached with `ray rsync-down cluster.yaml RUN_DIR DEST` instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --address) ADDRESS="$2"; shift 2;;
    -h|--help) sed -n '2,5p' "$0"; exit 0;;
    -*) die "unknown option $1";;
    *) break;;
  esac
done
[ $# -eq 2 ] || die "usage: jobs/fetch.sh [--address URL] JOB_ID|RUN_DIR DEST"
SRC="$1"
DEST="$(mkdir -p "$2" && cd "$2" && pwd)"                     # absolute: the commands below run in the repo
case "$SRC" in
  *://*) ;;
  */*|.*) [ -d "$SRC" ] || die "$SRC: no such folder"; SRC="$(cd "$SRC" && pwd)";;
esac
cd "$RAAL_REPO"
case "$SRC" in
  /*|*://*) "$LOCAL_PY" -m raal.cluster fetch "$SRC" "$DEST";;
  *) "$LOCAL_PY" -m raal.cluster fetch --address "$ADDRESS" "$SRC" "$DEST";;     # a job id
esac
if [ -f "$DEST/results.md" ]; then                      # a sweep: its table, and the curves side by side
  cat "$DEST/results.md"
  "$LOCAL_PY" -m raal.report "$DEST/baseline" "$DEST"/trials/trial_* --out "$DEST/report" > /dev/null
  echo "raal: curves of the baseline and every trial in $DEST/report/report.html"
elif [ -f "$DEST/config.yaml" ]; then
  "$LOCAL_PY" -m raal.report "$DEST" --out "$DEST/report"
fi
