-- Every version of every template; a changed file becomes a new version, old ones stay
-- so that what a mail was rendered from can be told later.
CREATE TABLE templates (
    id           text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    content_hash bytea NOT NULL,
    mail_kind    text NOT NULL CHECK (mail_kind IN ('marketing', 'transactional')),
    subject      text NOT NULL,
    preheader    text,
    html         text NOT NULL,
    text         text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);
