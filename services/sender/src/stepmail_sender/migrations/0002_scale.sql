-- Retries from the ledger, suppression at send time and throttles shared by all replicas.
ALTER TABLE deliveries
    -- HMAC-SHA256 of the lower-cased recipient address (keyed): suppression matches on it.
    ADD COLUMN rcpt_hash       text,
    -- The recipient's domain (lower case), for per-domain throttles; not personal data.
    ADD COLUMN rcpt_domain     text,
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN bounce          text CHECK (bounce IN ('hard', 'soft')),
    ADD COLUMN dsn             text,
    -- For suppressed: why (unsubscribed, complained, bounced, erased).
    ADD COLUMN reason          text;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'deferred';

-- Who must not get mail. scope 'address': key is the recipient hash; scope 'contact': the
-- contact id. mail_kind '*' covers every kind.
CREATE TABLE suppressions (
    scope      text NOT NULL CHECK (scope IN ('address', 'contact')),
    key        text NOT NULL,
    mail_kind  text NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('unsubscribed', 'complained', 'bounced', 'erased')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key, mail_kind)
);

-- Token buckets shared by every replica (per receiving domain, per provider account).
CREATE TABLE throttles (
    bucket     text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
