-- Preference-centre topics: a mail of a topic the contact opted out of is not sent.
ALTER TABLE deliveries
    -- The mail's topic (from mail.rendered), when its step has one.
    ADD COLUMN topic text;

-- The topics each contact opted out of, per mail kind: replaced by every
-- engagement.unsubscribed event that lists topics, cleared by engagement.resubscribed.
-- A mail of such a topic becomes suppressed with reason 'unsubscribed_topic' when claimed.
CREATE TABLE topic_opt_outs (
    contact_id text NOT NULL,
    mail_kind  text NOT NULL,
    topic      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contact_id, mail_kind, topic)
);
