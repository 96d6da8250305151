#!/bin/sh
# MLflow tracking server for a cluster (infra/compose.yaml, infra/k8s/stack.yaml), run from
# the samsnet-search image: sqlite backend store in DATA_DIR, artifacts in s3://$BUCKET/mlartifacts
# on the S3 endpoint $MLFLOW_S3_ENDPOINT_URL, keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
# Clients upload through the server; downloads use presigned URLs to the S3 endpoint.
#   usage: mlflow.sh DATA_DIR
set -eu
data="${1:?usage: mlflow.sh DATA_DIR}"
bucket="${BUCKET:-samsnet}"
: "${MLFLOW_S3_ENDPOINT_URL:?set MLFLOW_S3_ENDPOINT_URL (e.g. http://seaweedfs:8333)}"
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY}"
# The server's admin login; clients (Ray nodes, trials) send the same two variables.
: "${MLFLOW_TRACKING_USERNAME:?set MLFLOW_TRACKING_USERNAME (the MLflow admin login)}"
: "${MLFLOW_TRACKING_PASSWORD:?set MLFLOW_TRACKING_PASSWORD}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
mkdir -p "$data"
# Create the bucket before the first artifact (and Ray storage) needs it; retry while S3 starts.
BUCKET="$bucket" python - <<'PY'
import os, time
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
bucket = os.environ["BUCKET"]
for attempt in range(60):
    try:
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
        break
    except Exception as e:  # S3 still starting
        print(f"waiting for S3 at {os.environ['MLFLOW_S3_ENDPOINT_URL']}: {type(e).__name__}", flush=True)
        time.sleep(2)
else:
    raise SystemExit(f"S3 at {os.environ['MLFLOW_S3_ENDPOINT_URL']} did not answer; bucket {bucket} not created")
PY
# MLflow's basic-auth app: every request needs the login; nobody else has any permission.
umask 077
mkdir -p /tmp/mlflow-auth
cat > /tmp/mlflow-auth/auth.ini <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$data/mlflow-auth.db
admin_username = $MLFLOW_TRACKING_USERNAME
admin_password = $MLFLOW_TRACKING_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/mlflow-auth/auth.ini
export MLFLOW_FLASK_SERVER_SECRET_KEY="${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(python -c 'import secrets; print(secrets.token_hex(32))')}"
# One worker and no job runner: about 430 MB instead of 2.3 GB. --allowed-hosts: the Host
# headers clients send (the service name `mlflow` plus localhost for port-forwards).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 --workers 1 \
    --backend-store-uri "sqlite:///$data/mlflow.db" \
    --artifacts-destination "s3://$bucket/mlartifacts" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}"
