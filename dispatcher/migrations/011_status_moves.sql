-- 011: a status change writes its event through one set-based call made by the statement
-- that moves the commands, not by a row trigger.
--
-- 010's row trigger (commands_status_changed) called dispatcher_emit_status once per moved
-- row: an expiry of 5,000 commands ran 5,000 trigger calls and 5,000 one-row INSERTs.
-- Measured (python -m bench.status_trigger, 20,000 commands, embedded PostgreSQL, 2-core
-- box): with the row trigger, expiry ran at x0.60 of its speed before 010 (1.04 s against
-- 1.74 s, stop 22). Each
-- statement of queries.sql that changes a status (apply_acks, cancel_commands,
-- cancel_disenrolled, expire_due, push_rejected) now ends with
--     emitted AS (SELECT dispatcher_emit_moved(array_agg(m.moved ...), array_agg(m.previous ...))
--                 FROM moved m)
-- over the rows its UPDATE returned: one INSERT per statement, as before 010. The INSERT
-- itself is still written once, here; test_schema.py holds every statement that sets a
-- status to making the call. New rows keep 010's statement trigger.
-- With this migration, on a quiet box, medians of 7 interleaved rounds (two runs): expiry
-- 0.321 s before 010 against 0.361 s here (x0.89; 0.317 / 0.359 in the second run),
-- ingest 0.476 s against 0.520 s (x0.92). The rest of the cost is the one array of the
-- moved rows the function takes; end to end both stay far above the service's rates
-- (ingest is Kafka-bound at ~4-5k/s, expiry 55k rows/s).

DROP TRIGGER commands_status_changed ON commands;
DROP FUNCTION dispatcher_status_changed();

-- The events of the commands `moved`, each from its status in previous[i] (NULL: new),
-- in array order (unnest keeps it; the outbox's seq orders a device's events).
CREATE FUNCTION dispatcher_emit_moved(moved commands[], previous text[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO status_outbox (command_id, aos_device, payload)
    SELECT m.id, m.aos_device, dispatcher_status_event(m.id, m.organization, m.aos_device,
           m.command, m.status, m.unnest, m.updated_at, m.push_id, m.error_type,
           m.error_message, m.created_by, m.cancelled_by)
    -- unnest of two arrays: the commands' columns, then previous (named "unnest")
    FROM unnest(moved, previous) AS m
$$;

CREATE OR REPLACE FUNCTION dispatcher_status_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dispatcher_emit_moved(array_agg(n::commands), array_fill(NULL::text, ARRAY[count(*)::int]))
    FROM inserted n HAVING count(*) > 0;
    RETURN NULL;
END $$;

DROP FUNCTION dispatcher_emit_status(commands[], text);
