# featurestore image: the server, the CLI and the lineage consumer (docs/deploy.md).
#   docker build -t featurestore .
#   docker run -p 8080:8080 -p 50051:50051 featurestore      # the 100k-user demo, memory stores
# Production: deploy/docker-compose.yml (one host) or deploy/k8s/ (Kubernetes).
#
# EXTRAS are the backends installed besides the core (Redis): every remote backend the
# deploy configs name (ClickHouse over HTTP, etcd, Kafka, Neo4j, GraphQL, OTLP traces).
# The embedded ClickHouse engine (extra `embedded`, chdb: ~200 MB of RSS and the largest
# wheel) is left out; build with --build-arg EXTRAS=all to include it.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=clickhouse,etcd,kafka,neo4j,graphql,otlp,client
WORKDIR /src
# LICENSE* : copied when present (the package metadata may name it)
COPY pyproject.toml constraints.txt README.md LICENSE* ./
COPY featurestore ./featurestore
COPY lineage ./lineage
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
# tini is PID 1 (ENTRYPOINT): the kernel drops a signal to PID 1 that has no handler, so
# a server still starting would ignore `docker stop` / the kubelet's SIGTERM until its
# grace ran out; tini forwards it, and reaps orphans (a kernel-build child whose worker died).
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# deploy/k8s/featurestore.yaml runs as this same 10001.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 featurestore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home featurestore \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /install /usr/local
USER 10001:10001
WORKDIR /data
# The root filesystem may be read-only (Kubernetes): bytecode was compiled at install
# time, and everything written at run time goes to /tmp (PROMETHEUS_MULTIPROC_DIR of the
# workers) or /data (demo data, a file registry).
ENV FEATURESTORE_DATA_DIR=/data PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 50051
# For `docker run` of the server; compose and Kubernetes define their own checks.
# `featurestore healthcheck` asks /readyz where the server's configuration puts it (the
# admin port, or the serving port over HTTPS with TLS on): it reads the same FEATURESTORE_*
# variables as the server, and its config file from FEATURESTORE_CONFIG (set it when the
# server runs with --config FILE; ports given as flags are not seen: use the variables).
# Run as its module alone, every 10 s: no other command module (numpy, pyarrow) is loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["python", "-m", "featurestore.cli.health"]
ENTRYPOINT ["tini", "--", "featurestore"]
CMD ["serve", "--demo", "--no-clickhouse", "--host", "0.0.0.0"]
