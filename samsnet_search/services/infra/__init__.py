"""The full local stack: SeaweedFS (an S3-compatible store) and an MLflow tracking server.

`up(cfg)` starts both as detached processes under one state folder, waits until they
answer, and records them in `<state>/stack.json`; `down(cfg)` stops them, `status(cfg)`
checks them, and `client_env(cfg)` gives the environment a client (the search, a Ray
worker, a shell) needs to log to MLflow and read/write the bucket. `check_reachable`
tells whether a storage URI and a tracking URI answer, within a short timeout.

Modules: `config` (InfraConfig and its checks), `credentials` (S3 keys, MLflow login),
`s3` (clients for an S3 endpoint), `processes` (ports, spawning and stopping, the state
file), `stack` (up / down / status / client_env), `reachable` (check_reachable).

State folder layout (default `$XDG_STATE_HOME/samsnet/infra`, i.e. `~/.local/state/samsnet/infra`,
or `$SAMSNET_INFRA_DIR`, or `--state-dir`):

    credentials.json     generated S3 keys (only when none come from the environment) and the
                         MLflow admin login and session key (mode 0600)
    s3-identities.json   SeaweedFS identities file built from the S3 keys (mode 0600)
    mlflow-auth.ini      MLflow basic-auth config with the admin login (mode 0600)
    mlflow-auth.db       MLflow's user database (sqlite)
    s3.sock, filer.sock  SeaweedFS's S3 and filer unix sockets (only this user may connect)
    seaweedfs/           SeaweedFS data (master, volumes, filer metadata)
    mlflow.db            MLflow backend store (sqlite)
    stack.json           pids, ports and addresses of the running services (no secrets)
    logs/seaweedfs.log, logs/mlflow.log

Closed by default: SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one
process) runs inside a private network namespace (see `weed_sandbox`), so its master,
volume, filer and admin ports and their gRPC twins (P + 10000) answer nobody outside it;
only the S3 API is forwarded to `--host`. S3 requests must be signed (one admin identity,
no anonymous one: unsigned requests get 403). The MLflow server runs MLflow's basic-auth
app with a generated admin login: requests without it get 401 (`--no-auth` turns that off,
on 127.0.0.1 only).
"""

from __future__ import annotations

from ..storage import s3_client, s3_filesystem, storage_uri  # the stack's client helpers live with all storage I/O
from .config import (
    ARTIFACT_PREFIX,
    FLAGS,
    GRPC_OFFSET,
    SERVICES,
    STUDY_PREFIX,
    WEED_PORTS,
    InfraConfig,
    InfraError,
    default_state_dir,
    make_config,
)
from .credentials import (
    ADMIN_PASSWORD_ENV,
    ADMIN_USERNAME_ENV,
    MLFLOW_ADMIN,
    Credentials,
    MlflowLogin,
    credentials_path,
    load_credentials,
    load_mlflow_login,
)
from .processes import check_ports, weed_grpc_sockets
from .reachable import check_reachable
from .stack import ServiceStatus, StackInfo, client_env, down, recorded, status, study_storage, up

__all__ = [
    "ADMIN_PASSWORD_ENV",
    "ADMIN_USERNAME_ENV",
    "ARTIFACT_PREFIX",
    "FLAGS",
    "GRPC_OFFSET",
    "MLFLOW_ADMIN",
    "SERVICES",
    "STUDY_PREFIX",
    "WEED_PORTS",
    "Credentials",
    "InfraConfig",
    "InfraError",
    "MlflowLogin",
    "ServiceStatus",
    "StackInfo",
    "check_ports",
    "check_reachable",
    "client_env",
    "credentials_path",
    "default_state_dir",
    "down",
    "load_credentials",
    "load_mlflow_login",
    "make_config",
    "recorded",
    "s3_client",
    "s3_filesystem",
    "status",
    "storage_uri",
    "study_storage",
    "up",
    "weed_grpc_sockets",
]
