-- 0007_mask_segments: the segments a mask group declares, with their codes.

-- Segments are written once, with the group, and always read with it: a column of the group's
-- row, not a table of their own, so a group still reads in one row and no grant changes. The
-- server validates each element (pacs_grpc/domain/segments.py); the checks here keep the shape.
alter table annotation_mask_group add column segments jsonb not null default '[]'
    constraint annotation_mask_group_segments_check
    check (jsonb_typeof(segments) = 'array' and jsonb_array_length(segments) <= 255);
comment on column annotation_mask_group.segments is
    'Declared segments (pixel_value, label, category/type codes, algorithm_type, display_color, '
    'description); empty: nonzero pixels are the slice''s label_name.';
