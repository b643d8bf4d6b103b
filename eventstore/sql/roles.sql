-- eventstore least-privilege roles (group roles, NOLOGIN).
--
-- Rendered and run by eventstore.roles.create_roles(); the placeholders
-- {schema}, {writer}, {projector}, {reader} are identifiers quoted with
-- psycopg.sql.Identifier (never pasted from user input). To get plain SQL for a
-- DBA: python -m eventstore.roles --prefix eventstore  (prints the rendered script).
--
-- Roles are created beforehand (CREATE ROLE ... NOLOGIN, idempotently); this
-- script only grants, and every GRANT is idempotent, so it can run again after
-- a migration adds tables.
--
-- What no role may do, whatever it is granted: UPDATE, DELETE or TRUNCATE
-- events. The append-only triggers of the 0001 migration
-- (eventstore_forbid_change_v1) refuse it for every role, the owner included.
-- These grants are the second line of defence: the roles hold no UPDATE,
-- DELETE or TRUNCATE privilege on events in the first place.

-- Everyone needs to find the tables.
GRANT USAGE ON SCHEMA {schema} TO {writer}, {projector}, {reader};

-- writer: append and read. INSERT needs the identity sequence of
-- global_position; RETURNING and the stream look-ups need SELECT.
GRANT SELECT, INSERT ON TABLE {schema}.events TO {writer};
GRANT USAGE ON SEQUENCE {events_sequence} TO {writer};

-- projector: read events; read and write checkpoints and failures; create its
-- read-model tables (it then owns them, so its setup()/reset() may alter,
-- truncate and drop only those).
GRANT SELECT ON TABLE {schema}.events TO {projector};
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {schema}.projection_checkpoints TO {projector};
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {schema}.projection_failures TO {projector};
GRANT USAGE ON SEQUENCE {failures_sequence} TO {projector};
GRANT CREATE ON SCHEMA {schema} TO {projector};

-- reader: read events only.
GRANT SELECT ON TABLE {schema}.events TO {reader};
