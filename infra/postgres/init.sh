#!/bin/sh
# The `driftline` role and its database: the prediction and label store, the retraining
# ledger and the Optuna studies. The password comes from DRIFTLINE_DB_PASSWORD; psql's
# :'password' quotes it, so no character of it can change the SQL. The postgres image
# runs this once, on the first start with an empty volume.
set -e
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  -v password="${DRIFTLINE_DB_PASSWORD:?set DRIFTLINE_DB_PASSWORD}" <<'SQL'
CREATE ROLE driftline LOGIN PASSWORD :'password';
CREATE DATABASE driftline OWNER driftline;
SQL
