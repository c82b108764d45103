#!/bin/sh
# First start of the compose PostgreSQL (empty data volume): one database and one role per part,
# each role's password from the environment (docker-compose.yml passes them from .env).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v registry_password="$REGISTRY_DB_PASSWORD" \
    -v activities_password="$ACTIVITIES_DB_PASSWORD" \
    -v analytics_password="$ANALYTICS_DB_PASSWORD" \
    -v gateway_password="$GATEWAY_DB_PASSWORD" \
    -f /vmc/postgres-init.sql
