-- 006: a command's results are bounded, a redelivered ack is recognised without
-- reading them (dispatcher/acks.py), and a duration keeps its fraction of a second.
--
-- results keeps the newest acks.RESULTS_MAX entries within acks.RESULTS_MAX_BYTES of
-- JSON; results_dropped counts the entries that had to go (oldest first). ack_keys holds
-- the 64-bit fingerprints of the command's last acks.ACK_KEYS_MAX acks: a redelivery is
-- a set lookup, not a comparison with every stored entry. Rows stored before this
-- migration get their fingerprints from their results on their next ack.
-- (Columns with constant defaults: no table rewrite.)

ALTER TABLE commands
    ADD COLUMN results_dropped integer NOT NULL DEFAULT 0,
    ADD COLUMN ack_keys bigint[] NOT NULL DEFAULT '{}';

-- A command's validity keeps its fraction of a second ("3.5s" is answered as "3.5s"):
-- duration_s stays the whole seconds (what the index keys and the seed 000 record read),
-- duration_nanos is the rest, as in google.protobuf.Duration.
ALTER TABLE commands
    ADD COLUMN duration_nanos integer NOT NULL DEFAULT 0
        CHECK (duration_nanos BETWEEN 0 AND 999999999);
