CREATE TABLE contacts (
    id          text PRIMARY KEY,
    email       text,
    name        text,
    locale      text NOT NULL,
    time_zone   text NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every applied change of a scenario is a new version; enrollments keep theirs.
CREATE TABLE scenarios (
    id          text NOT NULL,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    digest      text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'archived')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);

CREATE TABLE enrollments (
    id               uuid PRIMARY KEY,
    scenario_id      text NOT NULL,
    scenario_version integer NOT NULL,
    contact_id       text NOT NULL REFERENCES contacts (id),
    trigger_event    jsonb NOT NULL,
    step_index       integer NOT NULL DEFAULT 0,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'completed', 'exited')),
    next_due_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (scenario_id, scenario_version) REFERENCES scenarios (id, version),
    -- entry rule "once ever" (the only one so far)
    UNIQUE (scenario_id, contact_id)
);
CREATE INDEX enrollments_due ON enrollments (next_due_at) WHERE status = 'active';
CREATE INDEX enrollments_contact ON enrollments (contact_id);

-- Consumed event ids, written in the same transaction as their effect.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Transactional outbox: rows commit with the state change, a relay publishes them.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    event       jsonb NOT NULL,
    -- the traceparent of the work that wrote the row, so the trace goes on
    trace       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
