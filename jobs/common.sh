# Shared by the jobs/ scripts (sourced, not run). Settings come from the environment:
#   RAAL_JOBS_ADDRESS   the Ray jobs API (default http://127.0.0.1:8265, e.g. after `ray dashboard cluster.yaml`)
#   RAY                 the ray CLI (default: ray)
#   RAAL_CLUSTER_PYTHON the python on the cluster nodes (default: python)
#   RAAL_CLUSTER_LOCK   the lock the job checks the node against before raal starts (default: locks/cluster.txt)
#   RAY_AUTH_MODE       passed through as is: `token` (with ~/.ray/auth_token) or `disabled`; must match the cluster
set -euo pipefail
RAAL_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="${RAY:-ray}"
ADDRESS="${RAAL_JOBS_ADDRESS:-http://127.0.0.1:8265}"
CLUSTER_PY="${RAAL_CLUSTER_PYTHON:-python}"
LOCAL_PY="${RAAL_LOCAL_PYTHON:-$( [ -x "$RAAL_REPO/.venv/bin/python" ] && echo "$RAAL_REPO/.venv/bin/python" || echo python3)}"

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }
