CREATE TABLE contacts (
    id                text PRIMARY KEY,
    email             text,
    name              text,
    locale            text NOT NULL,
    time_zone         text NOT NULL,
    attributes        jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags              text[] NOT NULL DEFAULT '{}',
    -- per mail kind: {"status": granted|withdrawn, "source", "at", "evidence"}
    consent           jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_activity_at  timestamptz,
    last_marketing_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contacts_last_activity ON contacts (last_activity_at);

-- A contact's recent events, for count thresholds ("3 times within 7 days").
CREATE TABLE activity (
    contact_id  text NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    properties  jsonb NOT NULL,
    occurred_at timestamptz NOT NULL
);
CREATE INDEX activity_contact_name ON activity (contact_id, name, occurred_at);

-- Every applied change of a scenario is a new version; enrollments keep theirs.
CREATE TABLE scenarios (
    id          text NOT NULL,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    digest      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);
-- The marketer's switch, for all versions of a scenario.
CREATE TABLE scenario_status (
    id          text PRIMARY KEY,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'archived')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE enrollments (
    id               uuid PRIMARY KEY,
    scenario_id      text NOT NULL,
    scenario_version integer NOT NULL,
    contact_id       text NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    trigger_event    jsonb NOT NULL,
    step_index       integer NOT NULL DEFAULT 0,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'completed', 'exited', 'held_out')),
    next_due_at      timestamptz,
    exit_reason      text,
    converted        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    FOREIGN KEY (scenario_id, scenario_version) REFERENCES scenarios (id, version)
);
CREATE INDEX enrollments_due ON enrollments (next_due_at) WHERE status = 'active';
CREATE INDEX enrollments_contact ON enrollments (contact_id, scenario_id);
CREATE INDEX enrollments_scenario ON enrollments (scenario_id, status);

-- One row per mail an enrollment asked for: the facts stats and branches read.
CREATE TABLE messages (
    message_id       text PRIMARY KEY,
    enrollment_id    uuid NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    scenario_id      text NOT NULL,
    step_id          text NOT NULL,
    variant          text NOT NULL,
    contact_id       text NOT NULL,
    mail_kind        text NOT NULL,
    requested_at     timestamptz NOT NULL,
    sent_at          timestamptz,
    failed_at        timestamptz,
    opened_at        timestamptz,
    clicked_at       timestamptz,
    unsubscribed_at  timestamptz,
    complained_at    timestamptz
);
CREATE INDEX messages_enrollment ON messages (enrollment_id);
CREATE INDEX messages_scenario_step ON messages (scenario_id, step_id);

-- Links clicked per message (unique clicks per link for stats).
CREATE TABLE message_clicks (
    message_id  text NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    url         text NOT NULL,
    clicked_at  timestamptz NOT NULL,
    PRIMARY KEY (message_id, url)
);

-- Consumed event ids, written in the same transaction as their effect.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Transactional outbox (stepmail_common.outbox).
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    event       jsonb NOT NULL,
    trace       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Signed webhooks to external systems (a CRM), delivered with retries.
CREATE TABLE notifications (
    id           uuid PRIMARY KEY,
    url          text NOT NULL,
    body         jsonb NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL,
    delivered_at timestamptz,
    failed_at    timestamptz,
    last_error   text
);
CREATE INDEX notifications_due ON notifications (next_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
