-- 0009_narrow_application_grants: no DELETE where the server never deletes.

-- Users, projects, masks and idempotency keys are removed only by cascades from what the
-- server does delete (annotations, groups, memberships), and cascades run with the table
-- owner's rights. A compromised application role then cannot erase them row by row.
revoke delete on security_user, security_project, annotation_mask, idempotency_key from pacs_app;
