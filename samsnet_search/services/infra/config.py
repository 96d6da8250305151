"""The local stack's settings (`InfraConfig`: state folder, host, bucket, ports) and their checks."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ...errors import SamsNetError

GRPC_OFFSET = 10000  # weed's default gRPC port for an HTTP port P is P + 10000
SERVICES = ("s3", "mlflow")  # start order; stop order is the reverse
ARTIFACT_PREFIX = "mlartifacts"  # MLflow artifacts live under s3://BUCKET/mlartifacts/
STUDY_PREFIX = "ray"  # studies (Ray Tune storage) live under s3://BUCKET/ray/: the `storage:` the docs give
# Variables that would make boto3 in the MLflow server sign with something other than our keys.
FOREIGN_AWS_VARS = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


class InfraError(SamsNetError):
    """The local stack cannot be started, reached or stopped. The message says why and what to change."""


Port = Annotated[int, Field(ge=1, le=65535)]
WeedPort = Annotated[int, Field(ge=1, le=65535 - GRPC_OFFSET, description="weed also opens this + 10000 (gRPC)")]

# Config field -> the CLI flag that sets it, for error messages.
FLAGS = {
    "state_dir": "--state-dir",
    "host": "--host",
    "bucket": "--bucket",
    "s3_port": "--s3-port",
    "mlflow_port": "--mlflow-port",
    "master_port": "--master-port",
    "volume_port": "--volume-port",
    "filer_port": "--filer-port",
    "admin_port": "--admin-port",
    "allowed_hosts": "--allowed-hosts",
    "start_timeout": "--timeout",
    "auth": "--no-auth",
    "isolate": "--no-isolation",
}
# The weed ports of the config, with a readable name each.
WEED_PORTS = {
    "s3_port": "S3 API",
    "master_port": "SeaweedFS master",
    "volume_port": "SeaweedFS volume server",
    "filer_port": "SeaweedFS filer",
    "admin_port": "SeaweedFS admin",
}


# Where weed puts the gRPC unix sockets it dials before TCP (not configurable in weed 4.48).
WEED_GRPC_SOCKET = "/tmp/seaweedfs-{part}-grpc-{port}.sock"
WEED_SOCKET_PARTS = {
    "s3_port": "s3",
    "master_port": "master",
    "volume_port": "volume",
    "filer_port": "filer",
    "admin_port": "admin",
}
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the trailing NUL


def default_state_dir() -> Path:
    """$SAMSNET_INFRA_DIR, else $XDG_STATE_HOME/samsnet/infra (XDG default: ~/.local/state).

    A user-level folder, so `infra status` and `infra env` find the stack from any folder.
    """
    if os.environ.get("SAMSNET_INFRA_DIR"):
        return Path(os.environ["SAMSNET_INFRA_DIR"])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "samsnet" / "infra"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class InfraConfig(BaseModel):
    """Where the stack keeps its state and on which address and ports it listens."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    state_dir: Path = Field(default_factory=default_state_dir, description="state, data and logs")
    host: str = Field("127.0.0.1", min_length=1, description="listen address; on a cluster one the workers reach")
    bucket: str = Field("samsnet", description="bucket for MLflow artifacts and Ray storage")
    region: str = Field("us-east-1", min_length=1, description="region name clients sign with")
    s3_port: WeedPort = 8333
    mlflow_port: Port = 5000
    master_port: WeedPort = 9333
    volume_port: WeedPort = 9340
    filer_port: WeedPort = 8888
    admin_port: WeedPort = 23646  # weed mini starts its admin server even with the UI off
    allowed_hosts: str | None = Field(
        None, description="MLflow --allowed-hosts (Host headers it accepts); default: localhost and private IPs"
    )
    start_timeout: float = Field(120.0, gt=0, description="seconds to wait for each service to become healthy")
    stop_timeout: float = Field(20.0, gt=0, description="seconds to wait after SIGTERM before SIGKILL")
    auth: bool = Field(True, description="MLflow basic auth; off (--no-auth) only on a loopback --host")
    isolate: bool = Field(
        True,
        description="SeaweedFS's internal ports in a private network namespace; off (--no-isolation): on 127.0.0.1",
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, v: str) -> str:
        ok = 3 <= len(v) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in v)
        if not ok or not (v[0].isalnum() and v[-1].isalnum()) or ".." in v:
            raise ValueError(
                f"bucket {v!r} is not a valid S3 bucket name: 3 to 63 characters, lowercase letters, "
                "digits, '.' and '-', starting and ending with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _closed_beyond_loopback(self) -> "InfraConfig":
        # Without a login the MLflow server answers anyone who reaches it: never on an address others reach.
        if not self.auth and not _is_loopback(self.host):
            raise ValueError(
                f"--no-auth with --host {self.host} would serve the MLflow server without a login to the network: "
                "use it only with --host 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> "InfraConfig":
        seen: dict[int, str] = {}
        for port, label in self.ports():
            if port in seen:
                raise ValueError(f"port {port} is used twice: {seen[port]} and {label}; give distinct ports")
            seen[port] = label
        return self

    def ports(self, service: str | None = None) -> list[tuple[int, str]]:
        """(port, 'name (flag)') for every port `service` ('s3', 'mlflow' or None: both) opens.

        With `isolate`, all but the S3 API and MLflow ports are inside SeaweedFS's namespace.
        """
        out: list[tuple[int, str]] = []
        if service in (None, "s3"):
            for key, name in WEED_PORTS.items():
                port = getattr(self, key)
                out.append((port, f"{name} ({FLAGS[key]})"))
                out.append((port + GRPC_OFFSET, f"{name} gRPC ({FLAGS[key]} + {GRPC_OFFSET})"))
        if service in (None, "mlflow"):
            out.append((self.mlflow_port, f"MLflow server ({FLAGS['mlflow_port']})"))
        return out

    def host_ports(self, service: str | None = None) -> list[tuple[str, int, str]]:
        """(address, port, label) of each port of `service` in this machine's network namespace.

        The S3 API (forwarded by the sandbox) and MLflow listen on `host`; SeaweedFS's internal
        ports are inside its namespace, or on 127.0.0.1 when not isolated.
        """
        outside = {self.s3_port, self.mlflow_port}
        out = []
        for port, label in self.ports(service):
            if port in outside:
                out.append((self.host, port, label))
            elif not self.isolate:
                out.append(("127.0.0.1", port, label))
        return out


def make_config(**options: Any) -> InfraConfig:
    """An `InfraConfig` from CLI-style options (None means default); errors name the CLI flag."""
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return InfraConfig(**given)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            where = FLAGS.get(key, key) or "infra options"
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}")
        raise InfraError("; ".join(lines)) from None
