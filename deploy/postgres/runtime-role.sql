-- The runtime role of `dispatcher run` (DISPATCHER_AUTO_MIGRATE=false): it reads and writes
-- the tables, and may not change the schema. The migrations run as the owner role
-- `dispatcher` (`dispatcher migrate`: the compose service `migrate`, the k8s Job).
--
-- compose.yaml mounts this file into /docker-entrypoint-initdb.d (it runs once, as the
-- owner, when the database is created). Elsewhere run it once as the owner, with your own
-- password. tests/acceptance/test_wheel.py runs it (role names replaced) before migrating
-- and starting the service from the wheel as that role.
CREATE ROLE dispatcher_app LOGIN PASSWORD 'dispatcher_app';  -- demo password: change it
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO dispatcher_app;
-- tables and sequences the owner creates later (every migration) ...
ALTER DEFAULT PRIVILEGES FOR ROLE dispatcher IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO dispatcher_app;
ALTER DEFAULT PRIVILEGES FOR ROLE dispatcher IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO dispatcher_app;
-- ... and those that exist already
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO dispatcher_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO dispatcher_app;
