#!/bin/sh
# One-shot bootstrap of the compose stack (deploy/docker-compose.yml, service `bootstrap`):
# publish the demo definitions to the registry, then load the demo data into the online
# stores. The server starts only after this exits 0 (depends_on:
# service_completed_successfully).
#
# Every `docker compose up` runs it again: `apply` of unchanged definitions publishes
# nothing, and the views are materialized into fresh data versions, which is what the
# compose Redis needs anyway (it keeps no data across restarts).
#
# Settings (environment; the defaults are the compose mounts):
#   FEATURESTORE_CONFIG   server config naming the registry and stores
#   DEFINITIONS           definitions file to apply
#   DATA_DIR              where the demo Parquet files are written
#   DEMO_ROWS             users in the demo data (default 100000)
#   FEATURESTORE          the CLI command (default `featurestore`)
set -eu

CONFIG=${FEATURESTORE_CONFIG:-/etc/featurestore/config/config.yaml}
DEFINITIONS=${DEFINITIONS:-/etc/featurestore/definitions/features.yaml}
DATA_DIR=${DATA_DIR:-/data}
DEMO_ROWS=${DEMO_ROWS:-100000}
FS=${FEATURESTORE:-featurestore}

echo "bootstrap: demo data ($DEMO_ROWS users) into $DATA_DIR"
$FS demo-data --out "$DATA_DIR" --rows "$DEMO_ROWS"

echo "bootstrap: applying $DEFINITIONS"
$FS apply "$DEFINITIONS" --config "$CONFIG" -m "compose bootstrap"

# view and Parquet file (the demo's batch sources)
for pair in user_profile:users.parquet user_activity:users.parquet \
    user_transactions:user_transactions.parquet; do
    view=${pair%%:*}
    file=${pair#*:}
    echo "bootstrap: materializing $view from $DATA_DIR/$file"
    $FS materialize --config "$CONFIG" --view "$view" --source "$DATA_DIR/$file" --quiet
done
echo "bootstrap: done"
