"""Platform services: MLflow tracking, study storage (local and S3), outage retry and the
local infra supervisor (SeaweedFS + MLflow)."""
