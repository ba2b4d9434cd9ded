-- enrollment_entry for many (scenario, contact) pairs in one round trip: the locks are
-- taken in the order given (callers sort the pairs, so two callers cannot deadlock on
-- them), then one query, with a snapshot taken after the last lock, reads them all.
CREATE FUNCTION enrollment_entries(p_scenario_ids text[], p_contact_ids text[])
RETURNS TABLE (
    entry_scenario_id text,
    entry_contact_id text,
    last_created_at timestamptz,
    last_ended_at timestamptz,
    has_active boolean
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_scenario_ids, 1), 0) LOOP
        PERFORM pg_advisory_xact_lock(
            hashtext('enroll:' || p_scenario_ids[i] || ':' || p_contact_ids[i]));
    END LOOP;
    RETURN QUERY
    SELECT v.s, v.c, l.created_at, l.ended_at,
           EXISTS (SELECT 1 FROM enrollments a
                   WHERE a.scenario_id = v.s AND a.contact_id = v.c AND a.status = 'active')
    FROM unnest(p_scenario_ids, p_contact_ids) AS v(s, c)
    LEFT JOIN LATERAL (
        SELECT e.created_at, e.ended_at FROM enrollments e
        WHERE e.scenario_id = v.s AND e.contact_id = v.c
        ORDER BY e.created_at DESC LIMIT 1
    ) l ON true;
END
$$;
