#!/bin/sh
# SeaweedFS S3 gateway for a cluster (infra/compose.yaml, infra/k8s/stack.yaml), run from
# the samsnet-search image. Keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (an
# env file or a Kubernetes Secret); the identities file holding them lives only in the
# container's /tmp (mode 0600), and there is no anonymous identity: unsigned requests get 403.
#   usage: seaweedfs.sh DATA_DIR
set -eu
data="${1:?usage: seaweedfs.sh DATA_DIR}"
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID (env file or Kubernetes Secret)}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY (env file or Kubernetes Secret)}"
mkdir -p "$data"
umask 077
python - > /tmp/s3-identities.json <<'PY'
import json, os
print(json.dumps({"identities": [{
    "name": "admin",
    "credentials": [{"accessKey": os.environ["AWS_ACCESS_KEY_ID"], "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}],
    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
}]}))
PY
# Only the S3 API listens on the container's network (0.0.0.0:8333): samsnet_search.services.weed_sandbox
# forwards it to weed's S3 unix socket. weed itself (master, volume, filer, admin and their gRPC
# twins, none of which checks credentials) binds the container's own loopback, which no other
# container or pod reaches. --no-namespace: the container is the boundary (Docker's default
# seccomp profile forbids a namespace inside it). Telemetry, WebDAV, the admin UI and the
# Iceberg/Lance catalogs are off.
mkdir -p /tmp/weed && chmod 700 /tmp/weed
exec python -m samsnet_search.services.weed_sandbox --host 0.0.0.0 --port 8333 --socket /tmp/weed/s3.sock --no-namespace -- \
    weed mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config=/tmp/s3-identities.json \
    -s3.port=18334 -s3.localSocket=/tmp/weed/s3.sock -filer.localSocket=/tmp/weed/filer.sock \
    -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0
