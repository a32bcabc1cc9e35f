-- 0011_annotation_event_append: a change event in one statement, so in one round trip.

-- An event takes its project's feed lock, then its event_id, then notifies; the lock is held
-- until commit so that event_id order is commit order within a project (see
-- pacs_grpc/adapters/postgres/annotation_event_feed.py). As three statements these cost the
-- writer a pipeline, and psycopg's pipeline mode costs more CPU than the round trips it saves.
-- In a function the order stays explicit: the lock is granted before nextval runs.
create function annotation_event_append(
    lock_key bigint, project bigint, study text, annotation bigint, kind text, channel text
) returns bigint
language plpgsql as $$
declare
    appended bigint;
begin
    perform pg_advisory_xact_lock(lock_key);
    insert into annotation_event (project_id, study_uid, annotation_id, event_type)
    values (project, study, annotation, kind)
    returning event_id into appended;
    -- The payload is the project id only: UIDs are client-chosen and may identify patients.
    perform pg_notify(channel, project::text);
    return appended;
end
$$;
