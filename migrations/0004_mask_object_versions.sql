-- 0004_mask_object_versions: a mask records the exact version of its object.

-- The bucket is versioned. Completing an upload records the version that was checked, and
-- downloads are signed for that version, so overwriting the object through a still-valid
-- ticket adds a version but changes nothing that was recorded.
alter table annotation_mask add column object_version text;
comment on column annotation_mask.object_version is
    'Storage version id of the object as checked at completion; downloads are signed for it.';
