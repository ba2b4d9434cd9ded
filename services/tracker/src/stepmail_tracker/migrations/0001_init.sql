-- Delivery times of sent mails, to tell an open or click made seconds after delivery
-- (a scanner or prefetcher) from a person's; pruned after TRACKER_DELIVERY_RETENTION_DAYS.
CREATE TABLE deliveries (
    message_id text PRIMARY KEY,
    contact_id text NOT NULL,
    sent_at    timestamptz NOT NULL
);
CREATE INDEX deliveries_sent_at ON deliveries (sent_at);
CREATE INDEX deliveries_contact ON deliveries (contact_id);

-- Each contact's current opt-out per kind of mail, for the preference centre.
-- topics NULL: the whole kind; otherwise the preference-centre topics opted out of.
-- version grows with each change, so each change is its own event id (a replay is not).
CREATE TABLE opt_outs (
    contact_id   text NOT NULL,
    mail_kind    text NOT NULL CHECK (mail_kind IN ('marketing', 'transactional')),
    subscribed   boolean NOT NULL,
    topics       text[],
    version      integer NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (contact_id, mail_kind)
);

-- Complaints and unsubscribes as bare counts over time, for the alerting ratios.
CREATE TABLE signals (
    kind text NOT NULL CHECK (kind IN ('complaint', 'unsubscribe')),
    at   timestamptz NOT NULL
);
CREATE INDEX signals_at ON signals (kind, at);
