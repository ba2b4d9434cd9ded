-- The delivery ledger: one row per message_id, whatever the number of redeliveries.
CREATE TABLE deliveries (
    message_id       text PRIMARY KEY,
    contact_id       text NOT NULL,
    enrollment_id    text NOT NULL,
    scenario_id      text NOT NULL,
    scenario_version integer NOT NULL,
    step_id          text NOT NULL,
    step_index       integer NOT NULL,
    mail_kind        text NOT NULL,
    state            text NOT NULL DEFAULT 'accepted' CHECK (
        state IN ('accepted', 'sending', 'sent', 'failed', 'ambiguous', 'deferred', 'suppressed')
    ),
    -- Claims so far; the claimant of attempt n is the only process that may send it.
    attempt          integer NOT NULL DEFAULT 0,
    -- Advisory-lock key of the claiming process: it is alive iff a session holds that lock.
    owner            bigint,
    -- The current attempt re-sends a mail whose earlier attempt ended ambiguous.
    resend           boolean NOT NULL DEFAULT false,
    -- For ambiguous: the policy that was applied (hold or resend).
    policy           text CHECK (policy IN ('hold', 'resend')),
    smtp_code        integer,
    smtp_response    text,
    -- What is needed to send (envelope and MIME), kept only until the mail's fate is known.
    mail             jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX deliveries_sending ON deliveries (owner) WHERE state = 'sending';
CREATE INDEX deliveries_contact ON deliveries (contact_id);

-- Transactional outbox: a delivery event commits with its state change; a relay publishes it.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    event       jsonb NOT NULL,
    trace       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
