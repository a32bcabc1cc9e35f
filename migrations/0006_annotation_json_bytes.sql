-- 0006_annotation_json_bytes: what reading an annotation's JSON costs, kept by PostgreSQL.

-- List pages and Watch catch-up batches stop at a byte budget. With the size in the row,
-- the page query can decide where to stop before it reads (and detoasts) any JSON, so a
-- page of large annotations ends early instead of filling the server's memory.
alter table annotation_annotation add column json_bytes integer not null
    generated always as (
        octet_length(annotation_data::text) + coalesce(octet_length(measurement_values::text), 0)
    ) stored;
comment on column annotation_annotation.json_bytes is
    'Bytes of annotation_data and measurement_values as JSON text; bounds list pages.';
