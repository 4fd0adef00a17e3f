#!/usr/bin/env bash
# Submit a raal run (or, with --tune, a sweep) to a Ray cluster as a Ray job; by default follow its logs.
#
#   jobs/submit.sh [--address URL] [--tune] [--gpus N] [--hold NAME=AMOUNT]... [--hold-timeout S] [--id ID]
#                  [--no-wait] -- [conf=NAME] [key=value ...]
#
# The repo is shipped with --working-dir (without .venv, runs/ and .git). Run stores must outlive the job's
# temporary working dir: give run_dir=/tune.dir= yourself, or set RAAL_RUN_ROOT (a shared path or s3://bucket/prefix)
# and the job writes to $RAAL_RUN_ROOT/runs/ID (sweeps: $RAAL_RUN_ROOT/sweeps/ID). The folder is recorded in the
# job's metadata, where jobs/fetch.sh finds it. --gpus N (or --hold) makes the job ask the autoscaler for the
# resources and wait for them before raal starts (cluster.yaml's GPU group scales from 0).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODULE=raal.run; DIRKEY=run_dir; KIND=runs; ID=""; WAIT=1; HOLD=(); TIMEOUT=1800
while [ $# -gt 0 ]; do
  case "$1" in
    --address) ADDRESS="$2"; shift 2;;
    --tune) MODULE=raal.tune; DIRKEY=tune.dir; KIND=sweeps; shift;;
    --gpus) HOLD+=("GPU=$2"); shift 2;;
    --hold) HOLD+=("$2"); shift 2;;
    --hold-timeout) TIMEOUT="$2"; shift 2;;
    --id) ID="$2"; shift 2;;
    --no-wait) WAIT=0; shift;;
    --) shift; break;;
    -h|--help) sed -n '2,10p' "$0"; exit 0;;
    *) die "unknown option $1 (raal arguments go after --)";;
  esac
done
ARGS=("$@")
CONF=demo
for a in "${ARGS[@]}"; do case "$a" in conf=*) CONF="${a#conf=}";; esac; done
[ -n "$ID" ] || ID="raal-${CONF//[^A-Za-z0-9_-]/_}-$(date +%Y%m%d-%H%M%S)"

DIR=""
for a in "${ARGS[@]}"; do case "$a" in "$DIRKEY="*) DIR="${a#*=}";; esac; done
if [ -z "$DIR" ]; then
  [ -n "${RAAL_RUN_ROOT:-}" ] || die "set RAAL_RUN_ROOT (shared path or s3://…) or pass $DIRKEY=…: a relative folder would be lost with the job's working dir"
  DIR="${RAAL_RUN_ROOT%/}/$KIND/$ID"
  ARGS+=("$DIRKEY=$DIR")
fi
case "$DIR" in /*|*://*) ;; *) die "$DIRKEY=$DIR must be absolute or a URI (the job runs in a temporary working dir)";; esac

# The run dir goes verbatim into the job's entrypoint and metadata (dashboard, `ray job list`): refuse one that
# carries credentials (user:secret@, or a query key outside this allow-list, the same as raal/store.py's
# SAFE_QUERY_KEYS). The job gets its credentials from the cloud's own chain instead.
SAFE_QUERY_KEYS="region endpoint_override scheme anonymous allow_bucket_creation allow_bucket_deletion connect_timeout request_timeout force_virtual_addressing default_bucket_location project_id"
refuse_credentials() {
  local uri="$1" rest auth query kv key
  case "$uri" in *://*) ;; *) return 0;; esac
  rest="${uri#*://}"
  auth="${rest%%[/?#]*}"
  local chain="remove them and let the job use the cloud's own credential chain (AWS_* env vars or an instance/IAM role, GOOGLE_APPLICATION_CREDENTIALS or workload identity, ~/.aws/credentials on the nodes)"
  case "$auth" in *@*) die "$DIRKEY carries credentials (user:secret@ in the URI), which would be stored in the job's entrypoint and metadata; $chain";; esac
  query=""
  case "$rest" in *\?*) query="${rest#*\?}"; query="${query%%#*}";; esac
  local kvs=()
  IFS='&' read -ra kvs <<< "$query"
  for kv in ${kvs[@]+"${kvs[@]}"}; do
    key="${kv%%=*}"; [ -n "$key" ] || continue
    case " $SAFE_QUERY_KEYS " in
      *" $(printf '%s' "$key" | tr '[:upper:]' '[:lower:]') "*) ;;
      *) die "$DIRKEY carries the query key '$key' (only $SAFE_QUERY_KEYS are allowed), which would be stored in the job's entrypoint and metadata; $chain";;
    esac
  done
}
refuse_credentials "$DIR"

# The entrypoint as separate words: `ray job submit` shell-quotes each one (so [20]*4 reaches raal intact).
# It starts by checking the node's packages against raal's lock (RAAL_CLUSTER_LOCK, default the one cluster.yaml's
# setup_commands install): a node that drifted from what CI ran stops the job with one line per difference.
ENTRY=("$CLUSTER_PY" -m raal.lockcheck "${RAAL_CLUSTER_LOCK:-locks/cluster.txt}" --)
if [ ${#HOLD[@]} -gt 0 ]; then
  ENTRY+=("$CLUSTER_PY" -m raal.cluster hold "${HOLD[@]}" --timeout "$TIMEOUT" --)
fi
ENTRY+=("$CLUSTER_PY" -m "$MODULE" "${ARGS[@]}")

RUNTIME_ENV=$(cat <<JSON
{"excludes": [".venv", "runs", ".git", ".pytest_cache", "**/__pycache__", "*.egg-info", "bench/results"],
 "env_vars": {"TQDM_DISABLE": "1", "RAAL_LOG": "${RAAL_LOG:-INFO}", "PYTHONUNBUFFERED": "1"}}
JSON
)
META=$(printf '{"raal_dir": "%s", "raal_conf": "%s", "raal_module": "%s"}' "$DIR" "$CONF" "$MODULE")
echo "raal: submitting $ID to $ADDRESS: ${ENTRY[*]}"
echo "raal: results in $DIR"
cd "$RAAL_REPO"
WAITFLAG=(); [ "$WAIT" = 1 ] || WAITFLAG=(--no-wait)
exec "$RAY" job submit --address "$ADDRESS" --submission-id "$ID" --working-dir . \
  --runtime-env-json "$RUNTIME_ENV" --metadata-json "$META" "${WAITFLAG[@]}" -- "${ENTRY[@]}"
