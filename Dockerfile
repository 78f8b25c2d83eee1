# featurestore serving image. Build: docker build -t featurestore .
# Run the demo:  docker run -p 8080:8080 -p 50051:50051 featurestore serve --demo --host 0.0.0.0
# Production:    mount a config (see deploy/config/production.yaml) and run
#                featurestore serve --config /etc/featurestore/config.yaml
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY featurestore ./featurestore
COPY lineage ./lineage
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt ".[otlp]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 featurestore && mkdir -p /data && chown featurestore /data
COPY --from=build /install /usr/local
USER featurestore
WORKDIR /data
ENV FEATURESTORE_DATA_DIR=/data PYTHONUNBUFFERED=1
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz',timeout=1).status!=200)"
ENTRYPOINT ["featurestore"]
CMD ["serve", "--demo", "--host", "0.0.0.0"]
