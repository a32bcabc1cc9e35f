-- 0014_review_states: a review step before AI output counts, and a reviewer role to take it.

-- Reviewers read, approve and reject; they do not write. Owners review too.
alter table security_project_member drop constraint security_project_member_role_check;
alter table security_project_member add constraint security_project_member_role_check
    check (role in ('viewer', 'annotator', 'reviewer', 'owner'));

-- Whether ExportMaskGroup may send a group that is not APPROVED to the PACS (owners decide).
alter table security_project add column export_unapproved boolean not null default false;

-- The review of an annotation and of a mask group: its state, and the last transition's
-- actor, time and (for a rejection) comment. New and changed content is a draft.
alter table annotation_annotation
    add column review_state text not null default 'draft'
        check (review_state in ('draft', 'submitted', 'approved', 'rejected')),
    add column review_comment text check (char_length(review_comment) <= 2000),
    add column reviewed_by bigint references security_user (id),
    add column reviewed_at timestamptz;
alter table annotation_mask_group
    add column review_state text not null default 'draft'
        check (review_state in ('draft', 'submitted', 'approved', 'rejected')),
    add column review_comment text check (char_length(review_comment) <= 2000),
    add column reviewed_by bigint references security_user (id),
    add column reviewed_at timestamptz;

-- The review queue: a project's annotations in one state, newest first, as the list pages.
create index annotation_annotation_project_review_idx
    on annotation_annotation (project_id, review_state, created_at desc, id desc);

-- Transitions are revisions too: who submitted, approved or rejected, and when.
alter table annotation_revision
    add column review_state text not null default 'draft',
    add column review_comment text;
alter table annotation_revision drop constraint annotation_revision_action_check;
alter table annotation_revision add constraint annotation_revision_action_check
    check (action in ('created', 'updated', 'restored', 'deleted', 'undeleted',
                      'submitted', 'approved', 'rejected'));

-- Watch says when one of an annotation's mask groups is submitted, approved or rejected: the
-- event names the group, and readers join its review as it is then.
alter table annotation_event add column mask_group_id bigint;
alter table annotation_event drop constraint annotation_event_event_type_check;
alter table annotation_event add constraint annotation_event_event_type_check
    check (event_type in ('created', 'updated', 'deleted', 'restored', 'mask_group_reviewed'));

-- As annotation_event_append (0011), naming a mask group.
create function annotation_event_append(
    lock_key bigint, project bigint, study text, annotation bigint, kind text, channel text,
    mask_group bigint
) returns bigint
language plpgsql as $$
declare
    appended bigint;
begin
    perform pg_advisory_xact_lock(lock_key);
    insert into annotation_event (project_id, study_uid, annotation_id, event_type, mask_group_id)
    values (project, study, annotation, kind, mask_group)
    returning event_id into appended;
    perform pg_notify(channel, project::text);
    return appended;
end
$$;
