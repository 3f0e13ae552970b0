#!/usr/bin/env bash
# Local Prefect and MLflow servers on 127.0.0.1 (SQLite), for running the deployment for real.
#   bash infra/start_servers.sh            # Prefect UI http://127.0.0.1:4200, MLflow UI http://127.0.0.1:5000
#   export PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   .venv/bin/python -m flows.deploy apply && .venv/bin/prefect worker start --pool rlhf-process
# Stop them with: kill $(cat .servers/*.pid)
set -euo pipefail
cd "$(dirname "$0")/.."
prefect_port="${PREFECT_PORT:-4200}"
mlflow_port="${MLFLOW_PORT:-5000}"
mkdir -p .servers mlruns/artifacts
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
nohup .venv/bin/prefect server start --host 127.0.0.1 --port "$prefect_port" > .servers/prefect.log 2>&1 &
echo $! > .servers/prefect.pid
nohup bash infra/mlflow_server.sh "$mlflow_port" > .servers/mlflow.log 2>&1 &
echo $! > .servers/mlflow.pid
for url in "http://127.0.0.1:$prefect_port/api/health" "http://127.0.0.1:$mlflow_port/health"; do
  for _ in $(seq 120); do curl -fs "$url" > /dev/null && break; sleep 1; done
  curl -fs "$url" > /dev/null || { echo "not up: $url (see .servers/)"; exit 1; }
done
echo "Prefect UI : http://127.0.0.1:$prefect_port"
echo "MLflow UI  : http://127.0.0.1:$mlflow_port"
