-- 002: each partial index of commands can serve only the statements written for it.
--
-- Why: after a mass expiry and a VACUUM, the planner's picture of the table says no
-- command is open. Every partial index whose predicate a query implies then looks
-- empty, and so free to read in full; the planner picked commands_open_expires for the
-- push claim's per-device "is this the head?" probe and read every open command for each
-- of the 64 candidates (178 ms a claim with 11,000 open; the benchmark saw a LOCK wait
-- 30 s). Refreshing statistics only narrows that window.
--
-- The fix does not depend on statistics: each partial index gets one more clause, a
-- tautology on a NOT NULL column of its own (its "key"), and only the statements meant
-- to use that index repeat the clause. For every other statement the index does not
-- exist, so each hot statement has one partial index to choose, walked in order with a
-- LIMIT (or probed by device), whatever the estimates. tests/integration/test_plans.py
-- asserts each plan with stale and with fresh statistics.
--
--   index                   key                  statements
--   commands_open_expires   seq > 0              expire_due, open_gauges
--   commands_push_due       push_attempts >= 0   claim_pushes (due), push_recovered
--   commands_device_open    pushes >= 0          per-device head probes (claim, wake-ups,
--                                                cancel_disenrolled)
--   commands_parked         duration_s >= 0      wake_parked
--
-- (Plain CREATE INDEX: on a large table this migration holds writes while it builds.)

DROP INDEX commands_open_expires;
CREATE INDEX commands_open_expires ON commands (expires_at)
    WHERE status IN ('PENDING', 'RECEIVED') AND seq > 0;

DROP INDEX commands_push_due;
CREATE INDEX commands_push_due ON commands (next_push_at)
    WHERE status = 'PENDING' AND next_push_at IS NOT NULL AND push_attempts >= 0;

DROP INDEX commands_device_open;
CREATE INDEX commands_device_open ON commands (aos_device, created_at, seq)
    WHERE status IN ('PENDING', 'RECEIVED') AND pushes >= 0;

DROP INDEX commands_parked;
CREATE INDEX commands_parked ON commands (aos_device)
    WHERE status = 'PENDING' AND next_push_at IS NULL AND sent_at IS NULL AND duration_s >= 0;
