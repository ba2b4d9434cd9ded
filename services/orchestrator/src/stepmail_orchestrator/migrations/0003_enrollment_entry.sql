-- An enrollment decision for one contact and scenario in one round trip: take the lock
-- that serialises such decisions (until the transaction ends), then read what they depend
-- on. A function, because each statement of a PL/pgSQL function reads a new snapshot: the
-- read sees an enrollment committed by whoever held the lock before, which one statement
-- that locks and reads could not (its snapshot is taken before it waits for the lock).
CREATE FUNCTION enrollment_entry(
    p_scenario_id text,
    p_contact_id text,
    OUT last_created_at timestamptz,
    OUT last_ended_at timestamptz,
    OUT has_active boolean
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('enroll:' || p_scenario_id || ':' || p_contact_id));
    SELECT e.created_at, e.ended_at INTO last_created_at, last_ended_at
    FROM enrollments e
    WHERE e.scenario_id = p_scenario_id AND e.contact_id = p_contact_id
    ORDER BY e.created_at DESC LIMIT 1;
    has_active := EXISTS (
        SELECT 1 FROM enrollments e
        WHERE e.scenario_id = p_scenario_id AND e.contact_id = p_contact_id
          AND e.status = 'active'
    );
END
$$;
