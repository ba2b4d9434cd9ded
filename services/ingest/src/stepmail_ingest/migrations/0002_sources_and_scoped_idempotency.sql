-- Idempotency is scoped by who posted: an API key (its id), a Shopify shop or a webhook
-- source, so signed webhooks (which carry no API key) dedupe too.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_api_key_id_fkey;
ALTER TABLE idempotency_keys ALTER COLUMN api_key_id TYPE text USING api_key_id::text;
ALTER TABLE idempotency_keys RENAME COLUMN api_key_id TO scope;

-- Per-key rate limit (requests per second); NULL takes INGEST_RATE_LIMIT_PER_SECOND.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_second double precision;

-- Senders of signed webhooks. The secret is needed in the clear to verify an HMAC, so it
-- is stored as given (this schema is ingest's alone), never logged and never shown again.
CREATE TABLE webhook_sources (
    name        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('standard', 'shopify')),
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
