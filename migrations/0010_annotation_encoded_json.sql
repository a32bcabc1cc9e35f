-- 0010_annotation_encoded_json: the JSON fields as the API encodes them, kept from the write.

-- Reads answer with google.protobuf.Struct and Value. Building those from JSON costs about
-- 0.2 ms per KiB in Python, which made a page of 50 annotations twenty reads' worth of CPU.
-- The server stores the message bytes the client sent next to the JSON, and reads return
-- them as they are. The JSON columns stay the truth (SQL, exports, json_bytes); the encoded
-- ones are a cache, and NULL (rows from before, or written by other means) means "encode
-- the JSON again".
alter table annotation_annotation
    add column annotation_data_encoded bytea,
    add column measurement_values_encoded bytea;
comment on column annotation_annotation.annotation_data_encoded is
    'annotation_data as a serialized google.protobuf.Struct; NULL: encode the JSON instead.';
comment on column annotation_annotation.measurement_values_encoded is
    'measurement_values as a serialized google.protobuf.Value; NULL: encode the JSON instead.';

-- A cache must never disagree with its source: an update that changes the JSON without
-- supplying its new encoding drops the old one.
create function annotation_encoded_json_guard() returns trigger
language plpgsql as $$
begin
    if new.annotation_data is distinct from old.annotation_data
       and new.annotation_data_encoded is not distinct from old.annotation_data_encoded then
        new.annotation_data_encoded := null;
    end if;
    if new.measurement_values is distinct from old.measurement_values
       and new.measurement_values_encoded is not distinct from old.measurement_values_encoded then
        new.measurement_values_encoded := null;
    end if;
    return new;
end
$$;

create trigger annotation_encoded_json_guard
    before update of annotation_data, measurement_values on annotation_annotation
    for each row execute function annotation_encoded_json_guard();
