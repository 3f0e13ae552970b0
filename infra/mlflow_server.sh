#!/usr/bin/env bash
# A local MLflow tracking server over the project's own store, bound to 127.0.0.1.
#   bash infra/mlflow_server.sh [PORT]        (default 5000)
# Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT before running the pipeline.
# For a team server, point --backend-store-uri at PostgreSQL (postgresql://user@host/db) and
# --artifacts-destination at shared storage; the pipeline needs only MLFLOW_TRACKING_URI.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-5000}"
mkdir -p mlruns/artifacts
exec .venv/bin/mlflow server \
  --host 127.0.0.1 --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$PWD/mlruns/mlflow.db" \
  --artifacts-destination "$PWD/mlruns/artifacts"
