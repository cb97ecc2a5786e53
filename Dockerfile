# One image for every process of a cloud run: the Prefect worker, the Ray head and the Ray workers.
# The tag is sslpipe:<version in pyproject.toml>, with "-gpu" for the CUDA variant:
#
#   docker build -t sslpipe:0.1.0 .
#   docker build -t sslpipe:0.1.0-gpu --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu .
#
# Push it where the cluster pulls from (docs/cluster.md); infra/ refers to it as <registry>/sslpipe:0.1.0-gpu.
# The base image's Ray must be the Ray of every client that joins the cluster: keep its version equal to
# the one installed with the project (tests/test_cluster_configs.py checks it).
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="sslpipe" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="sslpipe: Prefect flows, Ray Train pretraining, MLflow registry"

# Phone-home off for Ray, Prefect and MLflow. SSLPIPE_REPO is where infra/prefect.yaml's pull step cds to.
ENV RAY_USAGE_STATS_ENABLED=0 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSLPIPE_REPO=/app

# The ray images run as the non-root user "ray" (uid 1000, group "users", gid 100); it owns /app, so the
# default work_dir (./sslpipe-runs) is writable. Numeric ids: Kubernetes' runAsNonRoot (Pod Security
# "restricted") refuses to start an image whose USER is a name, since it cannot tell that it is not root.
USER 0
RUN mkdir -p /app && chown 1000:100 /app
USER 1000:100
WORKDIR /app

COPY --chown=1000:100 . /app

# Keep the base image's Ray (the cluster's Ray) while installing the project and its pinned torch pair.
RUN pip install --no-cache-dir . "ray[default,train]==$(python -c 'import ray; print(ray.__version__)')" \
    && sslpipe --help > /dev/null
