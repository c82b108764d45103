-- One database and one role per part: each part owns its database and reaches no other's
-- (no service reads another's tables). Run by postgres-init.sh, which gives each role's password as a
-- psql variable; on a managed server, run it with `psql -v registry_password=... -f postgres-init.sql`.
CREATE ROLE registry LOGIN PASSWORD :'registry_password';
CREATE ROLE activities LOGIN PASSWORD :'activities_password';
CREATE ROLE analytics LOGIN PASSWORD :'analytics_password';
CREATE ROLE gateway LOGIN PASSWORD :'gateway_password';

CREATE DATABASE registry OWNER registry;
CREATE DATABASE activities OWNER activities;
CREATE DATABASE analytics OWNER analytics;
CREATE DATABASE gateway OWNER gateway;

-- PUBLIC may connect to any database by default: only the owner may here.
REVOKE ALL ON DATABASE registry, activities, analytics, gateway FROM PUBLIC;
