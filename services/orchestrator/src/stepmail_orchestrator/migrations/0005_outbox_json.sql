-- Outbox events are stored as the text they are published as (json, not jsonb): the relay
-- sends that text unchanged, so building and printing a jsonb value per event was work
-- for nothing. The column can still be queried with -> and ->>.
ALTER TABLE outbox
    ALTER COLUMN event TYPE json USING event::json,
    ALTER COLUMN trace TYPE json USING trace::json;
