-- 0005_application_role: the role the server runs as, and exactly what it may do.
--
-- The migrator owns every table, so only it (or a superuser) can ALTER them, DISABLE the audit
-- triggers or change grants. The server connects as a login role that is a member of pacs_app and
-- owns nothing: it reads and writes data, and may only add to and read the append-only tables.
--
-- Roles are cluster-wide and this file runs once per database, so pacs_app is created only when
-- missing; a migrator without CREATEROLE needs an operator to create it first (README, "Database
-- roles"). Grants are per database and stated in full here: a later migration that adds a table
-- grants pacs_app what the server needs in the same file (tests/integration/test_database_roles.py
-- fails for a table it does not know).

do $$
begin
    if not exists (select from pg_roles where rolname = 'pacs_app') then
        create role pacs_app nologin;
    end if;
exception
    -- Another database of this cluster created it between the check and here.
    when duplicate_object or unique_violation then null;
end
$$;

-- Exactly the grants below, whatever an operator granted by hand before (0001 suggested a broader
-- "all tables" grant).
revoke all on all tables in schema public from pacs_app;
revoke all on all sequences in schema public from pacs_app;
revoke all on schema public from pacs_app;
-- PostgreSQL 15 and later already withhold this; earlier versions let every role create tables.
revoke create on schema public from public;

grant usage on schema public to pacs_app;

grant select, insert, update, delete on
    security_user,
    security_project,
    security_project_member,
    annotation_annotation,
    annotation_mask_group,
    annotation_mask,
    mask_upload,
    idempotency_key,
    storage_deletion_outbox
to pacs_app;

-- Append-only: the audit trail, and the change feed that viewers replay.
grant select, insert on audit_log, annotation_event to pacs_app;

-- Start-up checks that the schema is current; only the migrator changes it.
grant select on schema_migrations to pacs_app;

-- Identity columns draw from their sequences without a grant on them, so none is given.
