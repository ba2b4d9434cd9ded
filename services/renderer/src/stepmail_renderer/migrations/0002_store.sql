-- The template store: what template.yaml declares, archiving, shared layouts, failures.
ALTER TABLE templates
    ADD COLUMN sender             text,
    ADD COLUMN event_properties   text[],
    ADD COLUMN contact_attributes text[],
    ADD COLUMN sample             jsonb,
    ADD COLUMN description        text;

-- One row per template id that was archived (DELETE): its steps dead-letter until a new
-- version is saved. Versions stay, so what a sent mail was made from can still be told.
CREATE TABLE template_archive (
    id          text PRIMARY KEY,
    archived_at timestamptz NOT NULL DEFAULT now()
);

-- Shared layouts and partials (layouts/<file>.j2), versioned like templates.
CREATE TABLE layouts (
    name         text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    content_hash bytea NOT NULL,
    source       text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Steps that could not be rendered, by template version and error class (never the
-- data: the dead-letter topic holds the message and its reason).
CREATE TABLE render_failures (
    template_id text NOT NULL,
    version     integer NOT NULL,
    error       text NOT NULL,
    failures    bigint NOT NULL DEFAULT 0,
    last_at     timestamptz NOT NULL,
    PRIMARY KEY (template_id, version, error)
);
