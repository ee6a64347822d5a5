#!/bin/sh
# A rehearsal of docs/cluster.md on this machine (127.0.0.1 only):
#   scripts/local_cluster.sh up [--dir DIR]   PostgreSQL + mlflow server + a 2-node Ray; prints DIR/cluster.env
#   . DIR/cluster.env                         MLFLOW_TRACKING_URI, RAY_DASHBOARD, RAY_AUTH_TOKEN, ...
#   scripts/local_cluster.sh down --dir DIR   stops exactly the processes `up` started
# PYTHON: the Python with unitune installed (default: the project's .venv).
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-$here/../.venv/bin/python}" "$here/local_cluster.py" "$@"
