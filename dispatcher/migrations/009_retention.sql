-- 009: retention. A finished command is removed once it has been terminal for
-- DISPATCHER_RETENTION_S and its validity is over by as long (dispatcher/retention.py),
-- so the removal walks this index in order, oldest first, and stops at its LIMIT.
--
-- The key is greatest(finished_at, expires_at): a command removed while its validity
-- still ran could be replayed from the topic and pushed again; removed only after it,
-- a replay is recorded EXPIRED on arrival and never pushed. Only the removal's
-- statement filters on this expression, so no other statement can choose the index.
--
-- (Plain CREATE INDEX: on a large table this migration holds writes while it builds;
-- run it in a quiet hour, or create the index CONCURRENTLY by hand first.)

CREATE INDEX IF NOT EXISTS commands_removable ON commands ((greatest(finished_at, expires_at)))
    WHERE finished_at IS NOT NULL;
