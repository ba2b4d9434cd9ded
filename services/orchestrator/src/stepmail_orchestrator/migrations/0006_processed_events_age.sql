-- Marks of consumed events are needed only while an event can come again: redelivered from
-- its topic (7 days) or replayed from a dead-letter topic (30). The trigger scanner prunes
-- older ones (ORCHESTRATOR_PROCESSED_EVENTS_DAYS); they are written in time order, so a
-- small BRIN index finds them.
CREATE INDEX processed_events_age ON processed_events USING brin (processed_at);
