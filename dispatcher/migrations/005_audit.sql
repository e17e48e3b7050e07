-- 005: who did what, and what an idempotency key was first used for.
--
-- created_by: the token's `sub` of an HTTP-created command, the `createdBy` field of a
-- mdm.commands.created event, else the topic it came from. cancelled_by: the same for
-- the cancel that ended it (HTTP token `sub`, the event's `cancelledBy`, else the topic);
-- NULL when no one cancelled it. Both are shown in the records of both dialects and in
-- the mdm.commands.status events (omitted when NULL).
--
-- request_hash: a keyed hash (HMAC under the first DISPATCHER_SECRET_KEYS key, its id in
-- front) of the canonical HTTP request that created the command, never the request
-- itself (it may hold secrets). A replay of the Idempotency-Key with another request
-- answers 409. NULL for Kafka commands and rows stored before this migration.
-- (Nullable columns without defaults: no table rewrite.)

ALTER TABLE commands
    ADD COLUMN created_by text,
    ADD COLUMN cancelled_by text,
    ADD COLUMN request_hash text;

-- The status event with its actors (omitted when NULL). The ten-argument version stays
-- for replicas of the previous release during a rolling upgrade.
CREATE FUNCTION dispatcher_status_event(
    id text, organization text, aos_device text, command text, status text, previous text,
    at timestamptz, push_id text, error_type text, error_message text,
    created_by text, cancelled_by text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT dispatcher_status_event(id, organization, aos_device, command, status, previous,
                                     at, push_id, error_type, error_message)
          || jsonb_strip_nulls(jsonb_build_object('createdBy', created_by,
                                                  'cancelledBy', cancelled_by)) $$;
