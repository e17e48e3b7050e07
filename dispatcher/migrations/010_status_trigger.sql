-- 010: a command's status event is written in one place, by triggers on commands, not
-- by each statement that moves a command.
--
-- Until 009 six statements of queries.sql (insert_commands, apply_acks, cancel_commands,
-- cancel_disenrolled, expire_due, push_rejected) each carried its own copy of the
-- INSERT INTO status_outbox. Now the one INSERT is dispatcher_emit_status() below, and
-- two triggers call it, in the same transaction as the change, whatever statement
-- makes it:
-- - a new row (commands_status_inserted): previousStatus NULL. A statement trigger over
--   the inserted rows (a transition table), so a batch of inserts writes its events in
--   one set-based INSERT. ON CONFLICT DO NOTHING inserts, and so emits, nothing.
-- - a row whose status changes (commands_status_changed): previousStatus is the status
--   before. A row trigger, because a trigger with a transition table cannot name a
--   column: it would fire on, and copy, every row of every claim and push answer. Here
--   UPDATE OF status keeps those statements (they never set status) out, and the WHEN
--   drops a row whose status stays (an ack that only adds results) before any call.
--
-- Measured (python -m bench.status_trigger: 20,000 commands inserted in 10 transactions
-- of 2,000, as ingest writes them, on 001-009 with the statements' own INSERTs against
-- 001-010; embedded PostgreSQL on the shared, loaded 2-core box, medians of 5 interleaved
-- rounds, each run twice): before 3.07 s / 3.37 s, these triggers 3.04 s / 2.98 s, i.e.
-- no cost beyond the noise. A row trigger for inserts as well (tried first) took 4.22 s
-- against 3.07 s in the same run (+37%): hence the statement trigger for inserts.

CREATE FUNCTION dispatcher_emit_status(moved commands[], previous text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO status_outbox (command_id, aos_device, payload)
    SELECT m.id, m.aos_device, dispatcher_status_event(m.id, m.organization, m.aos_device,
           m.command, m.status, previous, m.updated_at, m.push_id, m.error_type,
           m.error_message, m.created_by, m.cancelled_by)
    FROM unnest(moved) WITH ORDINALITY AS m ORDER BY m.ordinality
$$;

CREATE FUNCTION dispatcher_status_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dispatcher_emit_status(array_agg(n::commands), NULL) FROM inserted n HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION dispatcher_status_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dispatcher_emit_status(ARRAY[NEW], OLD.status);
    RETURN NULL;
END $$;

CREATE TRIGGER commands_status_inserted AFTER INSERT ON commands
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher_status_inserted();

CREATE TRIGGER commands_status_changed AFTER UPDATE OF status ON commands
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION dispatcher_status_changed();
