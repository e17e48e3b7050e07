-- 012: which push goes next: priority, notBefore, fairness across organizations, and one
-- push rate limit for all replicas (CONTRACT.md "Order and fairness").
--
-- priority     the command's declared priority (high | normal | low), shown in its record.
-- push_rank    the rank a claim takes it by: 0 high, 1 normal, 2 low. A command inherits
--              the best rank of the newer commands of its device queued behind it (a
--              device gets its commands one at a time in creation order, so a stolen
--              phone's LOCK behind a low campaign REBOOT lifts that REBOOT, not waits for
--              the campaign's backlog to reach it).
-- not_before   not pushed before it; the command is due (next_push_at) from then.
--
-- (ADD COLUMN with a constant default rewrites nothing; the CHECK reads the table once.)
ALTER TABLE commands
    ADD COLUMN priority text NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    ADD COLUMN push_rank smallint NOT NULL DEFAULT 1,
    ADD COLUMN not_before timestamptz;

-- Open commands from before this migration take their type's default priority.
UPDATE commands SET priority = 'high', push_rank = 0
WHERE status IN ('PENDING', 'RECEIVED')
  AND command IN ('LOCK', 'WIPE', 'START_LOST_MODE', 'RESET_PASSWORD', 'DISENROLL');

-- The claim's queue: due pushes by rank, then organization (the round-robin walks the
-- organizations of a rank with a due push, dispatcher_due_pushes), then due time. Same
-- key as the index it replaces (push_attempts >= 0, see 002), so the same statements
-- (claim_pushes, push_recovered) and only they can use it.
DROP INDEX commands_push_due;
CREATE INDEX commands_push_queue ON commands (push_rank, organization, next_push_at)
    WHERE status = 'PENDING' AND next_push_at IS NOT NULL AND push_attempts >= 0;

-- The organizations of rank r with a push due now, in the order of their ids after
-- `after` and wrapping around to it, at most `most` of them: a loose index scan, one
-- probe per organization with a push queued at that rank (due or not), never per push.
CREATE FUNCTION dispatcher_due_orgs(r int, after text, most int) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    orgs text[] := '{}';
    org text := after;
    wrapped boolean := false;
    head record;
BEGIN
    WHILE cardinality(orgs) < most LOOP
        SELECT c.organization, c.next_push_at INTO head FROM commands c
        WHERE c.push_rank = r AND c.organization > org
          AND c.status = 'PENDING' AND c.next_push_at IS NOT NULL AND c.push_attempts >= 0
        ORDER BY c.organization, c.next_push_at LIMIT 1;
        IF NOT FOUND OR (wrapped AND head.organization > after) THEN
            EXIT WHEN wrapped OR after = '';
            wrapped := true;
            org := '';
            CONTINUE;
        END IF;
        org := head.organization;
        IF head.next_push_at <= now() THEN
            orgs := orgs || org;
        END IF;
    END LOOP;
    RETURN orgs;
END $$;

-- Up to `want` due pushes, locked (SKIP LOCKED: replicas claim side by side): rank 0
-- first, then 1, then 2; within a rank, organizations take turns (round-robin from the
-- one after cursors[rank + 1], the caller's last served): each of the organizations with
-- a due push gets an equal share of what is left, its oldest due first, and a second
-- round shares out what organizations with fewer due pushes than their share left.
-- O(organizations with work + pushes returned) per call, never O(backlog).
CREATE FUNCTION dispatcher_due_pushes(want int, cursors text[])
RETURNS TABLE (id text, rank smallint, organization text)
LANGUAGE plpgsql AS $$
DECLARE
    r int;
    orgs text[];
    full_orgs text[];
    org text;
    share int;
    got int;
    taken text[] := '{}';
    batch text[];
BEGIN
    FOR r IN 0..2 LOOP
        EXIT WHEN want <= 0;
        orgs := dispatcher_due_orgs(r, coalesce(cursors[r + 1], ''), want);
        WHILE want > 0 AND cardinality(orgs) > 0 LOOP
            share := ceil(want::numeric / cardinality(orgs));
            full_orgs := '{}';
            FOREACH org IN ARRAY orgs LOOP
                EXIT WHEN want <= 0;
                SELECT coalesce(array_agg(d.id), '{}') INTO batch FROM (
                    SELECT c.id FROM commands c
                    WHERE c.push_rank = r AND c.organization = org
                      AND c.status = 'PENDING' AND c.next_push_at IS NOT NULL
                      AND c.push_attempts >= 0 AND c.next_push_at <= now()
                      AND c.expires_at > now() AND NOT c.id = ANY(taken)
                    ORDER BY c.next_push_at LIMIT least(share, want)
                    FOR UPDATE SKIP LOCKED) d;
                got := cardinality(batch);
                taken := taken || batch;
                want := want - got;
                IF got = share THEN
                    full_orgs := full_orgs || org;
                END IF;
                RETURN QUERY SELECT b, r::smallint, org FROM unnest(batch) AS b;
            END LOOP;
            orgs := full_orgs;
        END LOOP;
    END LOOP;
END $$;

-- DISPATCHER_PUSH_RATE_PER_MIN, one budget per provider for all replicas: a token bucket
-- refilled by the database's clock. A claim takes tokens before it claims and gives back
-- what it did not use; a replica that dies holds nothing (tokens are not leases).
CREATE TABLE push_budget (
    provider    text PRIMARY KEY,
    tokens      float8 NOT NULL,
    updated_at  timestamptz NOT NULL
);
