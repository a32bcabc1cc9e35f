-- 0002_identity: what token-based identity and project listing need.

-- Keycloak owns a user's e-mail, but a user may also edit it here (UpdateUser). Remembering the
-- e-mail the last token carried tells the two apart: a token with a new e-mail (changed in
-- Keycloak) replaces the stored one, while an unchanged token leaves a profile edit alone.
alter table security_user add column claims_email text;
comment on column security_user.claims_email is
    'E-mail claim of the last token seen for this user; email follows it only when it changes.';

-- "My projects" pages by project id within one user's memberships.
drop index security_project_member_user_id_idx;
create index security_project_member_user_project_idx
    on security_project_member (user_id, project_id);
