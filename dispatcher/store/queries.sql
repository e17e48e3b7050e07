-- Every SQL statement of the dispatcher, as named blocks ("-- name: x").
-- Each transition is one guarded statement: it cannot move a terminal command. Its
-- mdm.commands.status event is written into status_outbox in the same transaction: a new
-- row's by the statement trigger on commands (migration 010), a status change's by the
-- moving statement itself, which ends with one set-based call over the rows it moved
-- (the "emitted" CTE: dispatcher_emit_moved, migration 011; test_schema.py holds every
-- statement that sets a status to it). "FROM moved, emitted" joins the one row of that
-- call, so the call is made whenever a row moved.
--
-- Index keys: a clause such as "seq > 0" or "pushes >= 0" is always true; it names the
-- partial index the statement is meant to use (dispatcher/migrations/002_index_keys.sql). A partial
-- index can serve only the statements that repeat its key, so a stale picture of the
-- table (every index "empty" after a mass expiry) cannot send a statement to the wrong
-- one. Keep each key with its statement; test_plans.py asserts the plans.

-- name: upsert_devices
-- Newer registry state wins; an older event (by updatedAt) changes nothing. The event is
-- the device's whole state: one without publicKey removes the key, one without
-- pushProvider goes back to the default provider.
INSERT INTO devices AS d (aos_device, organization, aos_enterprise, mdm_user, push_token, state, updated_at,
                          public_key, push_provider)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                     $8::text[], $9::text[])
ON CONFLICT (aos_device) DO UPDATE
SET organization = EXCLUDED.organization, aos_enterprise = EXCLUDED.aos_enterprise,
    mdm_user = EXCLUDED.mdm_user, push_token = EXCLUDED.push_token,
    state = EXCLUDED.state, updated_at = EXCLUDED.updated_at, public_key = EXCLUDED.public_key,
    push_provider = EXCLUDED.push_provider
WHERE d.updated_at <= EXCLUDED.updated_at
RETURNING aos_device, state, push_token IS NOT NULL AS has_token;

-- name: lock_devices
-- Before a device's registry state changes, its key is locked until the transaction
-- ends (all keys in one order: two batches cannot deadlock). A claim that parks a
-- command for want of a token then re-checks under the same key (try_lock_devices,
-- unpark_registered): a device registering at the moment its first command is claimed
-- cannot leave that command parked until the timer's repair.
SELECT count(*)::int AS n FROM (
    SELECT pg_advisory_xact_lock(1685287780, k)
    FROM (SELECT DISTINCT hashtext(d) AS k FROM unnest($1::text[]) AS t(d) ORDER BY k) keys
) locked;

-- name: try_lock_devices
-- The devices of $1 whose key this transaction holds now, taken without waiting (a
-- claim never waits for a registry change, so the two cannot deadlock).
SELECT d AS aos_device FROM (SELECT DISTINCT d FROM unnest($1::text[]) AS t(d)) devices
WHERE pg_try_advisory_xact_lock(1685287780, hashtext(d));

-- name: unpark_registered
-- Commands $1 that a claim parked for want of a token, re-checked under their device's
-- key ($2: the devices whose key this transaction holds): due now when the device has a
-- token after all; due again shortly when its key is held by a registry change still in
-- progress (its wake-up may not see this park); parked otherwise (the device's
-- registration wakes it, lock_devices).
UPDATE commands c
SET next_push_at = CASE WHEN c.aos_device = ANY($2::text[]) THEN now()
                        ELSE now() + interval '100 milliseconds' END
WHERE c.id = ANY($1::text[]) AND c.status = 'PENDING' AND c.next_push_at IS NULL
  AND (NOT c.aos_device = ANY($2::text[]) OR EXISTS (
        SELECT 1 FROM devices d WHERE d.aos_device = c.aos_device
          AND d.push_token IS NOT NULL AND d.state = 'ACTIVE'))
RETURNING c.id;

-- name: wake_devices
-- The oldest parked command of each of these devices becomes due for a push now (the
-- rest follow one by one, each woken when the one before it is answered). One past its
-- deadline is the timer's, not the pusher's (a mass expiry would otherwise wake, and
-- write, every command it is about to expire).
UPDATE commands c SET next_push_at = now()
FROM (SELECT h.id FROM unnest($1::text[]) AS d(aos_device)
      CROSS JOIN LATERAL (
          SELECT o.id FROM commands o
          WHERE o.aos_device = d.aos_device AND o.status = 'PENDING' AND o.pushes >= 0
            AND o.next_push_at IS NULL AND o.sent_at IS NULL AND o.expires_at > now()
          ORDER BY o.created_at, o.seq LIMIT 1) h) head
WHERE c.id = head.id
RETURNING c.id;

-- name: wake_parked
-- Safety net: the oldest parked command of each device that has a token (a missed
-- wake-up, e.g. an earlier command ended by an ack, a cancel or expiry before its push).
UPDATE commands c SET next_push_at = now()
FROM (SELECT DISTINCT ON (p.aos_device) p.id FROM commands p
      JOIN devices d ON d.aos_device = p.aos_device
      WHERE p.status = 'PENDING' AND p.next_push_at IS NULL AND p.sent_at IS NULL
        AND p.duration_s >= 0 AND p.expires_at > now() AND d.push_token IS NOT NULL AND d.state = 'ACTIVE'
      ORDER BY p.aos_device, p.created_at, p.seq) head
WHERE c.id = head.id
RETURNING c.id;

-- name: cancel_disenrolled
WITH target AS (
    SELECT id, status AS previous FROM commands
    WHERE aos_device = ANY($1::text[]) AND status IN ('PENDING', 'RECEIVED') AND pushes >= 0
    ORDER BY id FOR UPDATE
), moved AS (
    UPDATE commands c
    SET status = 'CANCEL', updated_at = now(), finished_at = now(), secret = NULL,
        next_push_at = NULL, push_lease_until = NULL,
        error_type = 'DEVICE_DISENROLLED', error_message = 'the device was disenrolled'
    FROM target t WHERE c.id = t.id AND c.status IN ('PENDING', 'RECEIVED')
    RETURNING c.id, c.aos_device, c.command, c.status, t.previous, c.created_at, c AS moved
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m
)
SELECT id, aos_device, command, status, previous, created_at FROM moved, emitted;

-- name: disenrolled_devices
-- Which of the devices $1 are disenrolled (their new commands are stored CANCEL).
SELECT aos_device FROM devices WHERE aos_device = ANY($1::text[]) AND state = 'DISENROLLED';

-- name: insert_commands
-- The same id twice is one command: a duplicate inserts nothing and emits nothing.
-- (Only inserted rows reach the status trigger: ON CONFLICT DO NOTHING inserts none.)
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::jsonb[], $8::bytea[], $9::text[], $10::int[], $11::timestamptz[],
                         $12::timestamptz[], $13::text[], $14::text[], $15::int[], $16::text[],
                         $17::text[], $18::text[], $19::timestamptz[], $20::text[], $21::int[])
        AS t(id, organization, aos_enterprise, aos_device, mdm_user, command, params, secret,
             status, duration_s, expires_at, created_at, source, user_name, duration_nanos,
             created_by, request_hash, priority, not_before, campaign, wave)
), inserted AS (
    INSERT INTO commands (id, organization, aos_enterprise, aos_device, mdm_user, command, params,
                          secret, status, duration_s, duration_nanos, expires_at, created_at,
                          updated_at, finished_at, next_push_at, source, user_name,
                          created_by, request_hash, error_type, error_message, priority,
                          push_rank, not_before, campaign, wave)
    SELECT id, organization, aos_enterprise, aos_device, mdm_user, command, params,
           CASE WHEN status = 'PENDING' THEN secret END, status, duration_s, duration_nanos,
           expires_at,
           created_at, now(),
           CASE WHEN status <> 'PENDING' THEN now() END,
           CASE WHEN status = 'PENDING' THEN greatest(now(), not_before) END,
           source, user_name, created_by, request_hash,
           CASE status WHEN 'EXPIRED' THEN 'EXPIRED_ON_ARRIVAL'
                       WHEN 'CANCEL' THEN 'DEVICE_DISENROLLED' END,
           CASE status WHEN 'EXPIRED' THEN 'the command''s validity had run out when it arrived'
                       WHEN 'CANCEL' THEN 'the device is disenrolled' END,
           priority, CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END,
           not_before, campaign, wave
    FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING id, aos_device, status, command, created_at
)
SELECT id, aos_device, status, command, created_at FROM inserted;

-- name: queue_new_commands
-- Where the new commands $1 stand in their devices' queues. A new command makes an older
-- PENDING one of its device moot when lifecycle.supersedes says so ($2 newer types, $3
-- older types, the rules' pairs): the older ends CANCEL SUPERSEDED with a results entry
-- naming the newest command that superseded it. A new command arriving late (created
-- before an open one of its device) is superseded the same way. Only pairs with a new
-- command are looked at (older pairs were settled when their newer one arrived), and a
-- command whose notBefore is still ahead takes no part yet. An older PENDING command
-- that stays takes the best rank of the newer ones behind it (a device gets its commands
-- in creation order: a high LOCK behind a low REBOOT lifts the REBOOT). Rows are locked
-- in id order, as every statement that locks several commands does.
-- Every read is a probe by key (LATERAL with OFFSET 0, which the planner cannot flatten
-- into a join of its choice; = ANY): a join chosen while the table was small (a scan of
-- every open command) cost 200+ ms per batch at 100,000 rows and held a stolen phone's
-- LOCK for seconds (make bench, "high LOCK p99"); a self-join of the open commands of
-- the batch's devices was quadratic (21 s for a batch of 4,000 with 16,000 open).
WITH rules AS MATERIALIZED (
    SELECT * FROM unnest($2::text[], $3::text[]) AS r(newer, older)
), fresh AS MATERIALIZED (
    SELECT c.* FROM (SELECT DISTINCT id FROM unnest($1::text[]) AS i(id)) i
    CROSS JOIN LATERAL (
        SELECT c1.id, c1.aos_device, c1.command, c1.created_at, c1.seq, c1.push_rank,
               (c1.not_before IS NULL OR c1.not_before <= now()) AS queued
        FROM commands c1 WHERE c1.id = i.id AND c1.status = 'PENDING' OFFSET 0) c
), pairs AS (
    -- (older, newer) of one device with a new command on either side, each found by an
    -- index probe per new command: the older PENDING ones before it, and the open ones
    -- after it (it arrived late); a pair of two new ones is found twice, which the
    -- aggregates below do not mind
    SELECT o.id, o.push_rank, n.id AS newer, n.created_at AS newer_at, n.seq AS newer_seq,
           n.push_rank AS newer_rank,
           n.queued AND o.queued AND (n.command, o.command) IN (SELECT * FROM rules)
               AS supersedes
    FROM fresh n CROSS JOIN LATERAL (
        SELECT o1.id, o1.command, o1.push_rank,
               (o1.not_before IS NULL OR o1.not_before <= now()) AS queued
        FROM commands o1 WHERE o1.aos_device = n.aos_device AND o1.status = 'PENDING'
          AND o1.pushes >= 0 AND (o1.created_at, o1.seq) < (n.created_at, n.seq)
        OFFSET 0) o
    UNION ALL
    SELECT n.id, n.push_rank, o.id, o.created_at, o.seq, o.push_rank,
           n.queued AND o.queued AND (o.command, n.command) IN (SELECT * FROM rules)
    FROM fresh n CROSS JOIN LATERAL (
        SELECT o1.id, o1.command, o1.created_at, o1.seq, o1.push_rank,
               (o1.not_before IS NULL OR o1.not_before <= now()) AS queued
        FROM commands o1 WHERE o1.aos_device = n.aos_device
          AND o1.status IN ('PENDING', 'RECEIVED') AND o1.pushes >= 0
          AND (o1.created_at, o1.seq) > (n.created_at, n.seq)
        OFFSET 0) o
), decided AS (
    SELECT p.id, (array_agg(p.newer ORDER BY p.newer_at DESC, p.newer_seq DESC)
                  FILTER (WHERE p.supersedes))[1] AS by, min(p.newer_rank) AS best_rank
    FROM pairs p GROUP BY p.id
    HAVING bool_or(p.supersedes) OR min(p.newer_rank) < min(p.push_rank)
), locked AS (
    SELECT d.id, d.by, d.best_rank FROM decided d JOIN commands c ON c.id = d.id
    WHERE c.id = ANY (ARRAY(SELECT id FROM decided))
    ORDER BY d.id FOR UPDATE OF c
), lifted AS (
    UPDATE commands c SET push_rank = l.best_rank
    FROM locked l WHERE c.id = ANY (ARRAY(SELECT id FROM locked)) AND c.id = l.id
      AND l.by IS NULL AND c.status = 'PENDING' AND c.push_rank > l.best_rank
    RETURNING c.id
), moved AS (
    UPDATE commands c
    SET status = 'CANCEL', updated_at = now(), finished_at = now(), secret = NULL,
        next_push_at = NULL, push_lease_until = NULL, error_type = 'SUPERSEDED',
        error_message = 'superseded by command ' || l.by,
        results = c.results || jsonb_build_array(jsonb_build_object(
            'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'errorType', 'SUPERSEDED', 'errorMessage', 'superseded by command ' || l.by,
            'data', jsonb_build_object('supersededBy', l.by)))
    FROM locked l WHERE c.id = ANY (ARRAY(SELECT id FROM locked)) AND c.id = l.id
      AND l.by IS NOT NULL AND c.status = 'PENDING'
    RETURNING c.id, c.aos_device, c.command, c.status, 'PENDING'::text AS previous,
              c.created_at, c AS moved
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m
)
SELECT id, aos_device, command, status, previous, created_at FROM moved, emitted;

-- name: lock_commands
-- The current state of the commands a batch of acks touches, locked in id order
-- (results is bounded: acks.RESULTS_MAX entries, acks.RESULTS_MAX_BYTES).
SELECT id, aos_device, organization, status, results, results_dropped, ack_keys FROM commands
WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE;

-- name: apply_acks
-- One row per command: its new status (or the same) and, when acks were added, its whole
-- new (capped) results, dropped count and ack fingerprints (NULL: unchanged), guarded by
-- the status read under lock. A step that keeps the status emits no event (changed).
WITH input AS (
    -- results arrive as JSON text and ack_keys as an array literal: a list inside an
    -- array parameter would be taken for an array dimension by the driver
    SELECT id, expected, status, results::jsonb AS results, results_dropped,
           ack_keys::bigint[] AS ack_keys, error_type, error_message
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
                $7::text[], $8::text[])
        AS t(id, expected, status, results, results_dropped, ack_keys, error_type, error_message)
), moved AS (
    UPDATE commands c
    SET status = i.status,
        results = coalesce(i.results, c.results),
        results_dropped = coalesce(i.results_dropped, c.results_dropped),
        ack_keys = coalesce(i.ack_keys, c.ack_keys),
        updated_at = now(),
        error_type = CASE WHEN i.status <> i.expected THEN coalesce(i.error_type, c.error_type) ELSE c.error_type END,
        error_message = CASE WHEN i.status <> i.expected THEN coalesce(i.error_message, c.error_message) ELSE c.error_message END,
        finished_at = CASE WHEN i.status IN ('DONE', 'ERROR') AND i.status <> i.expected THEN now() ELSE c.finished_at END,
        secret = CASE WHEN i.status IN ('DONE', 'ERROR') THEN NULL ELSE c.secret END,
        next_push_at = CASE WHEN i.status = 'PENDING' THEN c.next_push_at END,
        push_lease_until = CASE WHEN i.status = 'PENDING' THEN c.push_lease_until END
    FROM input i
    WHERE c.id = i.id AND c.status = i.expected
    RETURNING c.id, c.aos_device, c.command, c.status, i.expected AS previous, c.created_at,
              c AS moved, c.status <> i.expected AS changed
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m WHERE m.changed
)
SELECT id, aos_device, command, status, previous, created_at FROM moved, emitted;

-- name: cancel_commands
-- Cancel the commands $1 (distinct ids), each on behalf of its actor in $2 (cancelled_by).
WITH target AS (
    SELECT c.id, c.status AS previous, i.actor FROM commands c
    JOIN unnest($1::text[], $2::text[]) AS i(id, actor) ON c.id = i.id
    WHERE c.status IN ('PENDING', 'RECEIVED')
    ORDER BY c.id FOR UPDATE OF c
), moved AS (
    UPDATE commands c
    SET status = 'CANCEL', updated_at = now(), finished_at = now(), secret = NULL,
        next_push_at = NULL, push_lease_until = NULL,
        error_type = NULL, error_message = NULL, cancelled_by = t.actor
    FROM target t WHERE c.id = t.id AND c.status IN ('PENDING', 'RECEIVED')
    RETURNING c.id, c.aos_device, c.organization, c.command, c.status, t.previous,
              c.created_at, c.cancelled_by, c AS moved
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m
)
SELECT id, aos_device, organization, command, status, previous, created_at, cancelled_by
FROM moved, emitted;

-- name: command_devices
SELECT id, aos_device, status FROM commands WHERE id = ANY($1::text[]);

-- name: hold_events
INSERT INTO held_events (kind, command_id, payload, source)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[]);

-- name: take_held_for
DELETE FROM held_events WHERE command_id = ANY($1::text[])
RETURNING kind, command_id, payload, source, seq;

-- name: take_held_ready
-- Held events whose command exists now, oldest first; deleted as they are taken.
DELETE FROM held_events h
WHERE h.seq IN (
    SELECT h2.seq FROM held_events h2
    WHERE EXISTS (SELECT 1 FROM commands c WHERE c.id = h2.command_id)
    ORDER BY h2.seq LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING kind, command_id, payload, source, seq;

-- name: take_held_overdue
-- Held events whose command never came within the hold window.
DELETE FROM held_events h
WHERE h.seq IN (
    SELECT seq FROM held_events
    WHERE held_at < now() - $1 * interval '1 second'
    ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING kind, command_id, payload, source, seq;

-- name: expire_due
-- Open commands past their deadline become EXPIRED; SKIP LOCKED lets replicas share it.
WITH due AS (
    SELECT id, status AS previous FROM commands
    WHERE status IN ('PENDING', 'RECEIVED') AND seq > 0 AND expires_at <= now()
    ORDER BY expires_at LIMIT $1
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE commands c
    SET status = 'EXPIRED', updated_at = now(), finished_at = now(), secret = NULL,
        next_push_at = NULL, push_lease_until = NULL
    FROM due d
    WHERE c.id = ANY (ARRAY(SELECT id FROM due)) AND c.id = d.id
      AND c.status IN ('PENDING', 'RECEIVED')
    RETURNING c.id, c.aos_device, c.command, c.status, d.previous, c.created_at, c AS moved
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m
)
SELECT id, aos_device, command, status, previous, created_at FROM moved, emitted;

-- name: claim_pushes
-- Claim pushes that are due: at most one per device, only the device's oldest unsent
-- command (or a re-push), never while another push for the device is in flight. A
-- command whose notBefore has not come yet is not in a device's order (it is not due).
-- Which due pushes are looked at is dispatcher_due_pushes' choice (migration 012):
-- rank high, normal, low; organizations take turns within a rank, from the one after
-- the caller's last served ($3, one per rank).
-- The claim is a lease: an unanswered claim becomes due again when it runs out.
-- Rows that cannot go now (no token, waiting behind an earlier command, or of a campaign
-- no longer RUNNING) are parked.
-- A provider's rate budget ($4 providers, $5 pushes each may take; $6 the default
-- provider, of devices that name none) leaves what it does not cover due as it was.
-- At most $1 rows are looked at, so memory is bounded by the free concurrency; every
-- row looked at is returned (``claimed`` says which ones to send) so the caller knows
-- whether more may be due.
WITH due AS MATERIALIZED (
    SELECT d.id, d.rank FROM dispatcher_due_pushes($1, $3::text[]) d
), candidates AS MATERIALIZED (
    SELECT c.id, c.aos_device, c.created_at, c.seq, c.push_lease_until AS old_lease,
           c.next_push_at AS due_at, due.rank,
           CASE WHEN dv.state = 'ACTIVE' THEN dv.push_token END AS push_token,
           dv.public_key, dv.push_provider, coalesce(dv.push_provider, $6::text) AS lane,
           -- a command of a campaign that halted or was cancelled is not pushed (the
           -- campaign worker ends it a page at a time: until then it is parked)
           (c.campaign IS NULL OR EXISTS (
               SELECT 1 FROM campaigns g WHERE g.id = c.campaign AND g.state = 'RUNNING'))
               AS live,
           NOT EXISTS (
               SELECT 1 FROM commands o
               WHERE o.aos_device = c.aos_device AND o.status = 'PENDING' AND o.pushes >= 0
                 AND o.id <> c.id
                 AND ((o.sent_at IS NULL AND c.sent_at IS NULL
                       AND (o.not_before IS NULL OR o.not_before <= now())
                       AND (o.created_at, o.seq) < (c.created_at, c.seq))
                      OR o.push_lease_until > now())
           ) AS is_head
    -- LATERAL ... OFFSET 0 (not flattened into a join of the planner's choice): one index
    -- probe per due row whatever it believes of the table (a hash join planned while the
    -- table was small read all of it on every claim)
    FROM due CROSS JOIN LATERAL (SELECT * FROM commands c1 WHERE c1.id = due.id OFFSET 0) c
    LEFT JOIN LATERAL (SELECT * FROM devices d1 WHERE d1.aos_device = c.aos_device
                       OFFSET 0) dv ON true
), ranked AS (
    -- the one to send per device: the oldest eligible candidate (a window, not a join,
    -- so the plan stays linear whatever the planner guesses about these CTEs)
    SELECT k.*, (k.is_head AND k.push_token IS NOT NULL AND k.live AND row_number() OVER (
               PARTITION BY k.aos_device
               ORDER BY (k.is_head AND k.push_token IS NOT NULL AND k.live) DESC,
                        k.created_at, k.seq
           ) = 1) AS eligible
    FROM candidates k
), budgeted AS (
    -- within a provider's budget: the best ranked first
    SELECT r.*, r.eligible AND (b.quota IS NULL OR row_number() OVER (
               PARTITION BY r.eligible, r.lane ORDER BY r.rank, r.due_at, r.id) <= b.quota)
               AS chosen
    FROM ranked r LEFT JOIN unnest($4::text[], $5::int[]) AS b(lane, quota) ON b.lane = r.lane
), updated AS (
    UPDATE commands c
    SET push_lease_until = CASE WHEN r.chosen THEN now() + $2 * interval '1 second' END,
        next_push_at = CASE WHEN r.eligible AND NOT r.chosen THEN c.next_push_at
                            WHEN r.chosen OR c.sent_at IS NOT NULL
                            THEN now() + $2 * interval '1 second' END,
        push_attempts = c.push_attempts + r.chosen::int
    FROM budgeted r
    WHERE c.id = ANY (ARRAY(SELECT id FROM budgeted)) AND c.id = r.id
    RETURNING c.id, c.organization, c.aos_device, c.command,
              CASE WHEN r.chosen THEN c.params END AS params,
              CASE WHEN r.chosen THEN c.secret END AS secret,
              CASE WHEN r.chosen THEN r.public_key END AS public_key,
              c.status, c.expires_at, c.created_at, c.push_attempts, c.pushes, r.push_token,
              r.push_provider, r.old_lease IS NOT NULL AS reclaimed, r.chosen AS claimed,
              c.priority, r.rank, r.due_at
)
SELECT * FROM updated;

-- name: take_push_budget
-- DISPATCHER_PUSH_RATE_PER_MIN for all replicas: take up to $2 tokens of provider $1's
-- bucket (refilled at $3 a second by the database's clock, holding at most $4). Returns
-- the tokens granted and those left (none when the bucket row did not exist yet: it is
-- created, ask again). The row lock is held only by this statement.
WITH seed AS (
    INSERT INTO push_budget (provider, tokens, updated_at)
    VALUES ($1, $4::float8, clock_timestamp()) ON CONFLICT (provider) DO NOTHING
), level AS (
    SELECT provider, least($4::float8, tokens + $3::float8
               * greatest(0, extract(epoch FROM clock_timestamp() - updated_at))) AS tokens
    FROM push_budget WHERE provider = $1 FOR UPDATE
), taken AS (
    UPDATE push_budget b
    SET tokens = l.tokens - least($2::int, floor(l.tokens)), updated_at = clock_timestamp()
    FROM level l WHERE b.provider = l.provider
    RETURNING least($2::int, floor(l.tokens))::int AS granted,
              l.tokens - least($2::int, floor(l.tokens)) AS left_tokens
)
SELECT granted, left_tokens FROM taken;

-- name: give_push_budget
-- Tokens a claim took and did not use go back to provider $1's bucket (at most $3).
UPDATE push_budget SET tokens = least($3::float8, tokens + $2::int) WHERE provider = $1;

-- name: push_accepted
-- Answers are guarded by their claim. ``push_attempts`` counts the claims of a command
-- and only claim_pushes changes it, so the value a claim returned is its claim token:
-- every answer statement below matches ``push_attempts = <token>`` and so applies only
-- while no later claim has taken the push over. An answer written late, after its lease
-- ran out and another replica (or this one) claimed the push again, changes nothing: it
-- neither releases the new claim's lease nor ends or reschedules the command; the
-- current claim sends the push again and records its own answer. (The lease value is
-- not the token: an ack or a cancel clears it, and an accepted push must still be
-- recorded after an ack.) An answer whose lease ran out but whose push was not claimed
-- again is still the current claim's, and is recorded as usual.
--
-- The provider took the push: record it (also when an ack already ended the command:
-- the push did happen), release the lease, plan a re-push if wanted ($4 seconds later,
-- while fewer than $5 pushes were accepted and the command is still PENDING), and let
-- the device's oldest parked command go. The status never changes here. Guarded by the
-- claim token $6 (see above).
WITH done AS (
    UPDATE commands
    SET push_id = $2, sent_at = now(), delivery_expires_at = $3, pushes = pushes + 1,
        push_lease_until = NULL, updated_at = now(),
        next_push_at = CASE WHEN status = 'PENDING' AND $4::float8 > 0 AND pushes + 1 < $5::int
                            THEN now() + $4::float8 * interval '1 second' END
    WHERE id = $1 AND push_attempts = $6::int
    RETURNING aos_device
)
UPDATE commands c SET next_push_at = now()
WHERE EXISTS (SELECT 1 FROM done) AND c.id = (
    SELECT o.id FROM commands o
    WHERE o.aos_device = (SELECT aos_device FROM commands WHERE id = $1)
      AND o.status = 'PENDING' AND o.pushes >= 0 AND o.next_push_at IS NULL AND o.sent_at IS NULL
      AND o.expires_at > now() AND o.id <> $1
    ORDER BY o.created_at, o.seq LIMIT 1)
RETURNING c.id AS woken;

-- name: push_accepted_many
-- push_accepted for a batch of answers ($1 ids, $2 push ids, $3 delivery expiries, $6
-- claim tokens): one statement instead of one per push. Returns the woken commands
-- (``woken``) and the answers not recorded (``stale``: their claim was taken over, see
-- above; the push did happen, so the caller logs its push id, and the current claim
-- records the push that it sends).
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $6::int[])
        AS t(id, push_id, delivery_expires_at, claim)
), done AS (
    UPDATE commands c
    SET push_id = i.push_id, sent_at = now(), delivery_expires_at = i.delivery_expires_at,
        pushes = c.pushes + 1, push_lease_until = NULL, updated_at = now(),
        next_push_at = CASE WHEN c.status = 'PENDING' AND $4::float8 > 0
                                 AND c.pushes + 1 < $5::int
                            THEN now() + $4::float8 * interval '1 second' END
    FROM input i
    WHERE c.id = i.id AND c.push_attempts = i.claim
    RETURNING c.id, c.aos_device
), heads AS (
    -- one index probe per device (LATERAL ... LIMIT 1): a plan that reads every parked
    -- command and joins them to the batch would cost O(parked) per batch of answers
    SELECT h.id FROM (SELECT DISTINCT aos_device FROM done) d
    CROSS JOIN LATERAL (
        SELECT o.id FROM commands o
        WHERE o.aos_device = d.aos_device AND o.pushes >= 0
          AND o.status = 'PENDING' AND o.next_push_at IS NULL AND o.sent_at IS NULL
          AND o.expires_at > now() AND o.id NOT IN (SELECT id FROM done)
        ORDER BY o.created_at, o.seq LIMIT 1
    ) h
), woken AS (
    UPDATE commands c SET next_push_at = now()
    FROM heads h WHERE c.id = h.id
    RETURNING c.id
)
SELECT id AS woken, NULL::text AS stale FROM woken
UNION ALL
SELECT NULL, i.id FROM input i WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.id = i.id);

-- name: push_retry
-- A retriable failure (or a push not sent): release the lease and try again in $2
-- seconds. Guarded by the claim token $3: a late one leaves the current claim alone.
UPDATE commands
SET push_lease_until = NULL, next_push_at = now() + $2::float8 * interval '1 second'
WHERE id = $1 AND status = 'PENDING' AND push_attempts = $3::int;

-- name: push_recovered
-- The provider answers again after an outage: pushes backing off from it go now rather
-- than at the end of their (possibly long) backoff.
UPDATE commands SET next_push_at = now()
WHERE status = 'PENDING' AND next_push_at IS NOT NULL AND push_attempts >= 0
  AND next_push_at > now() AND push_lease_until IS NULL AND sent_at IS NULL
  AND push_attempts > 0;

-- name: push_rejected
-- A permanent rejection ends the command in ERROR and lets the device's next command go.
-- Also a push refused before it is sent: a secret that cannot be decrypted
-- (SECRET_UNREADABLE) or may not go in clear (NO_DEVICE_KEY) is never pushed without it.
-- Guarded by the claim token $4: a late rejection leaves the current claim to decide.
WITH moved AS (
    UPDATE commands c
    SET status = 'ERROR', updated_at = now(), finished_at = now(), secret = NULL,
        next_push_at = NULL, push_lease_until = NULL, error_type = $2, error_message = $3
    WHERE c.id = $1 AND c.status = 'PENDING' AND c.push_attempts = $4::int
    RETURNING c.id, c.aos_device, c.command, c.status, 'PENDING'::text AS previous, c.created_at,
              c AS moved
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m
), woken AS (
    UPDATE commands c SET next_push_at = now()
    WHERE c.id = (
        SELECT o.id FROM commands o
        WHERE o.aos_device = (SELECT aos_device FROM commands WHERE id = $1)
          AND o.status = 'PENDING' AND o.pushes >= 0
          AND o.next_push_at IS NULL AND o.sent_at IS NULL
          AND o.expires_at > now() AND o.id <> $1
        ORDER BY o.created_at, o.seq LIMIT 1)
    RETURNING c.id
)
SELECT id, aos_device, command, status, previous, created_at,
       (SELECT count(*) FROM woken) > 0 AS woke_next
FROM moved, emitted;

-- name: take_outbox
-- One relay at a time across replicas (a transaction-scoped advisory lock), so status
-- events reach the topic in the order their transitions committed; a replica that does
-- not get the lock takes nothing and tries again later.
SELECT seq, command_id, aos_device, payload::text AS payload, topic FROM status_outbox
WHERE pg_try_advisory_xact_lock(1685287779)
ORDER BY seq LIMIT $1 FOR UPDATE;

-- name: delete_outbox
DELETE FROM status_outbox WHERE seq = ANY($1::bigint[]);

-- name: open_gauges
SELECT status, count(*) AS n, min(created_at) AS oldest FROM commands
WHERE status IN ('PENDING', 'RECEIVED') AND seq > 0 GROUP BY status;

-- name: get_command
SELECT * FROM commands WHERE id = $1;

-- name: get_device
SELECT * FROM devices WHERE aos_device = $1;

-- name: api_list_commands
-- HTTP API: a device's commands newest first, keyset-paginated by (created_at, id) after
-- ($5, $6); optionally only some organizations ($2: the commands' own), one enterprise
-- ($3) or status ($4).
SELECT * FROM commands
WHERE aos_device = $1
  AND ($2::text[] IS NULL OR organization = ANY($2::text[]))
  AND ($3::text IS NULL OR aos_enterprise = $3)
  AND ($4::text IS NULL OR status = $4)
  AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::text))
ORDER BY created_at DESC, id DESC
LIMIT $7;

-- name: outbox_gauges
-- The status outbox for the gauges: its backlog, counted up to $1 rows (a bounded scan,
-- however far the relay is behind), and the age of its oldest event (the first entry of
-- the primary key), by the database's clock; 0 when it is empty.
SELECT (SELECT count(*) FROM (SELECT 1 FROM status_outbox LIMIT $1) AS capped) AS n,
       coalesce((SELECT extract(epoch FROM clock_timestamp() - created_at)::float8
                 FROM status_outbox ORDER BY seq LIMIT 1), 0) AS oldest_age_s;

-- name: remove_finished
-- Retention: remove up to $2 commands terminal for longer than $1 seconds whose validity
-- is over by as long (see migration 009), oldest first. SKIP LOCKED lets replicas remove
-- side by side without double work; a row an ack or the API holds is left for the next
-- pass. Status events of these commands left in the outbox are relayed all the same.
WITH gone AS (
    SELECT id FROM commands
    WHERE finished_at IS NOT NULL
      AND greatest(finished_at, expires_at) < now() - $1 * interval '1 second'
    ORDER BY greatest(finished_at, expires_at) LIMIT $2
    FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM commands c
    WHERE c.id = ANY (ARRAY(SELECT id FROM gone)) AND c.finished_at IS NOT NULL
    RETURNING 1
)
SELECT count(*)::int AS n FROM removed;

-- name: table_rows
-- Live and dead rows of commands as the statistics collector counts them (no scan).
SELECT coalesce(sum(n_live_tup), 0)::bigint AS live, coalesce(sum(n_dead_tup), 0)::bigint AS dead
FROM pg_stat_user_tables WHERE relname = 'commands' AND schemaname = current_schema();

-- Campaigns (migration 013, dispatcher/campaigns.py) ----------------------------------

-- name: insert_campaign
-- The same campaign id twice is one campaign: a replay inserts nothing (no row back).
-- Wave 0 is released at once (its commands wait for notBefore like any command's).
INSERT INTO campaigns (id, organization, aos_enterprise, command, params, secret, duration_s,
                       duration_nanos, not_before, target_all, wave_size, interval_s,
                       max_error_rate, created_at, updated_at, created_by, source,
                       next_release_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now(), $15, $16,
        CASE WHEN $11::int IS NOT NULL
             THEN greatest(now(), $9::timestamptz) + $12::float8 * interval '1 second' END)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: snapshot_campaign_targets
-- The targets of campaign $1, in order: the devices $2 (NULL: every ACTIVE device of the
-- enterprise) registered to its organization $3 and enterprise $4, each once. Done in
-- the database: a million targets never pass through the process.
WITH listed AS (
    SELECT u.d, min(u.o) AS o FROM unnest($2::text[]) WITH ORDINALITY AS u(d, o)
    WHERE $2::text[] IS NOT NULL GROUP BY u.d
), chosen AS (
    SELECT l.d, l.o FROM listed l
    JOIN devices v ON v.aos_device = l.d AND v.organization = $3 AND v.aos_enterprise = $4
    UNION ALL
    SELECT v.aos_device, 0 FROM devices v
    WHERE $2::text[] IS NULL AND v.aos_enterprise = $4 AND v.organization = $3
      AND v.state = 'ACTIVE'
), inserted AS (
    INSERT INTO campaign_targets (campaign, seq, aos_device)
    SELECT $1, row_number() OVER (ORDER BY c.o, c.d), c.d FROM chosen c
    RETURNING 1
)
UPDATE campaigns SET targets = (SELECT count(*) FROM inserted) WHERE id = $1
RETURNING targets;

-- name: campaign_dry_run
-- What campaign targets $1 (NULL: every ACTIVE device of enterprise $3) would reach in
-- organization $2: the targets, those without a push token, those disenrolled, and
-- listed devices not registered to the enterprise (not targets).
WITH listed AS (
    SELECT DISTINCT u.d FROM unnest($1::text[]) AS u(d) WHERE $1::text[] IS NOT NULL
), chosen AS (
    SELECT v.push_token, v.state FROM listed l
    JOIN devices v ON v.aos_device = l.d AND v.organization = $2 AND v.aos_enterprise = $3
    UNION ALL
    SELECT v.push_token, v.state FROM devices v
    WHERE $1::text[] IS NULL AND v.aos_enterprise = $3 AND v.organization = $2
      AND v.state = 'ACTIVE'
)
SELECT count(*)::int AS targets,
       count(*) FILTER (WHERE push_token IS NULL)::int AS without_push_token,
       count(*) FILTER (WHERE state = 'DISENROLLED')::int AS disenrolled,
       CASE WHEN $1::text[] IS NULL THEN 0
            ELSE ((SELECT count(*) FROM listed) - count(*))::int END AS not_registered
FROM chosen;

-- name: active_campaigns
-- Campaigns with work left (expansion, waves, counts still moving).
SELECT id FROM campaigns WHERE NOT settled ORDER BY id;

-- name: lock_campaign
-- One replica works on a campaign at a time; the others pass it by.
SELECT * FROM campaigns WHERE id = $1 AND NOT settled FOR UPDATE SKIP LOCKED;

-- name: get_campaign
-- The campaign, and ``released``: the targets of its released waves.
SELECT g.*, dispatcher_campaign_released(g) AS released FROM campaigns g WHERE g.id = $1;

-- name: list_campaigns
-- HTTP API: an organization's campaigns newest first, keyset-paginated after ($2, $3).
SELECT g.*, dispatcher_campaign_released(g) AS released FROM campaigns g
WHERE g.organization = $1
  AND ($2::timestamptz IS NULL OR (g.created_at, g.id) < ($2, $3::text))
ORDER BY g.created_at DESC, g.id DESC
LIMIT $4;

-- name: campaign_targets_page
-- The next $3 targets of campaign $1 after target $2, with what the registry knows.
SELECT t.seq, t.aos_device, v.mdm_user FROM campaign_targets t
LEFT JOIN devices v ON v.aos_device = t.aos_device
WHERE t.campaign = $1 AND t.seq > $2
ORDER BY t.seq LIMIT $3;

-- name: campaign_expanded
-- Targets up to $2 of campaign $1 are commands now: drop them from the snapshot.
WITH dropped AS (
    DELETE FROM campaign_targets WHERE campaign = $1 AND seq <= $2
)
UPDATE campaigns SET expanded = $2, updated_at = now() WHERE id = $1;

-- name: release_wave
-- Wave $2 of campaign $1 goes: its held commands take the release time as notBefore
-- and their validity from then ($3 seconds). The ids released.
UPDATE commands c
SET not_before = now(), next_push_at = now(),
    expires_at = now() + $3::float8 * interval '1 second', updated_at = now()
WHERE c.campaign = $1 AND c.wave = $2 AND c.status = 'PENDING'
  AND c.not_before = 'infinity'
RETURNING c.id;

-- name: campaign_released
-- Campaign $1 released one more wave; the next goes $2 seconds from now.
UPDATE campaigns
SET waves_released = waves_released + 1, updated_at = now(),
    next_release_at = now() + $2::float8 * interval '1 second'
WHERE id = $1;

-- name: count_campaign
-- Campaign $1's commands by status, stored on the campaign (reads never count them):
-- an index-only walk of the campaign's own rows.
UPDATE campaigns g SET counts = coalesce((
        SELECT jsonb_object_agg(s.status, s.n) FROM (
            SELECT c.status, count(*) AS n FROM commands c
            WHERE c.campaign = $1 AND c.wave >= 0 GROUP BY c.status) s), '{}'),
    counted_at = now()
WHERE g.id = $1
RETURNING g.counts;

-- name: stop_campaign
-- A RUNNING campaign ends in state $2 (HALTED, CANCELLED, DONE); $3 why (a halt), $4 who
-- (a cancel). Targets not yet made into commands get none. The campaign as it is now,
-- or nothing when it was not RUNNING.
WITH dropped AS (
    DELETE FROM campaign_targets t
    WHERE t.campaign = $1 AND EXISTS (SELECT 1 FROM campaigns g WHERE g.id = $1 AND g.state = 'RUNNING')
)
UPDATE campaigns
SET state = $2, updated_at = now(), finished_at = now(), halt_reason = $3,
    cancelled_by = $4, next_release_at = NULL
WHERE id = $1 AND state = 'RUNNING'
RETURNING *;

-- name: settle_campaign
-- Nothing of campaign $1 is left to do: its counts are final.
UPDATE campaigns SET settled = true, updated_at = now() WHERE id = $1;

-- name: end_campaign_commands
-- Up to $5 open commands of campaign $1 end CANCEL with errorType $2 and message $3:
-- every open one ($4 true, a cancel: cancelledBy $6), or only those not pushed yet
-- (a halt). A held one is given a deadline of now (retention counts from it).
WITH target AS (
    SELECT c.id, c.status AS previous FROM commands c
    WHERE c.campaign = $1 AND c.wave >= 0 AND c.status IN ('PENDING', 'RECEIVED')
      AND ($4::boolean OR (c.status = 'PENDING' AND c.sent_at IS NULL))
    ORDER BY c.id LIMIT $5
    FOR UPDATE
), moved AS (
    UPDATE commands c
    SET status = 'CANCEL', updated_at = now(), finished_at = now(), secret = NULL,
        next_push_at = NULL, push_lease_until = NULL, error_type = $2, error_message = $3,
        cancelled_by = $6,
        not_before = CASE WHEN c.not_before = 'infinity' THEN NULL ELSE c.not_before END,
        expires_at = CASE WHEN c.expires_at = 'infinity' THEN now() ELSE c.expires_at END
    FROM target t
    WHERE c.id = ANY (ARRAY(SELECT id FROM target)) AND c.id = t.id
      AND c.status IN ('PENDING', 'RECEIVED')
    RETURNING c.id, c.aos_device, c.command, c.status, t.previous, c.created_at, c AS moved
), emitted AS (
    SELECT dispatcher_emit_moved(array_agg(m.moved), array_agg(m.previous))
    FROM moved m
)
SELECT id, aos_device, command, status, previous, created_at FROM moved, emitted;

-- name: report_campaign
-- mdm.campaigns.status for campaign $1, through the outbox (the relay sends it keyed by
-- the campaign id); the state and counts it reported are kept to report only changes.
WITH reported AS (
    UPDATE campaigns g
    SET reported = jsonb_build_object('state', g.state, 'counts', g.counts),
        reported_at = now()
    WHERE g.id = $1
    RETURNING g AS row
)
INSERT INTO status_outbox (command_id, aos_device, payload, topic)
SELECT (r.row).id, (r.row).id, dispatcher_campaign_event(r.row), 'campaigns.status'
FROM reported r;

-- name: campaign_gauges
-- Campaigns by state, and their commands by status (the counts kept on each campaign:
-- no command is counted here). Over the campaigns retention keeps.
SELECT state, count(*)::int AS n, jsonb_agg(counts) AS counts FROM campaigns GROUP BY state;

-- name: remove_campaigns
-- Retention: campaigns settled for longer than $1 seconds, up to $2 of them.
WITH gone AS (
    SELECT id FROM campaigns
    WHERE settled AND coalesce(finished_at, updated_at) < now() - $1 * interval '1 second'
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM campaigns g WHERE g.id = ANY (ARRAY(SELECT id FROM gone)) RETURNING 1
)
SELECT count(*)::int AS n FROM removed;
