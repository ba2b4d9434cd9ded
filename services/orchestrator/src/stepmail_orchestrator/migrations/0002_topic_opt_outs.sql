-- Per mail kind, the preference-centre topics the contact opted out of (from
-- engagement.unsubscribed events with topics): {"marketing": ["campaign"]}. Steps of
-- those topics are skipped; the contact's other mail of the kind goes on.
ALTER TABLE contacts ADD COLUMN opted_out_topics jsonb NOT NULL DEFAULT '{}'::jsonb;
