-- 001: commands, devices, the status outbox and held events.
-- Open-command queries use partial indexes so tens of millions of finished commands
-- cost nothing to the hot paths (push claim, expiry, per-device order).

CREATE TABLE devices (
    aos_device      text PRIMARY KEY,
    organization    text NOT NULL,
    aos_enterprise  text NOT NULL,
    mdm_user        text,
    push_token      text,
    state           text NOT NULL CHECK (state IN ('ACTIVE', 'DISENROLLED')),
    updated_at      timestamptz NOT NULL
);

CREATE TABLE commands (
    id                   text PRIMARY KEY,
    seq                  bigint GENERATED ALWAYS AS IDENTITY,
    organization         text NOT NULL,
    aos_enterprise       text NOT NULL,
    aos_device           text NOT NULL,
    mdm_user             text,
    command              text NOT NULL,
    params               jsonb NOT NULL DEFAULT '{}',
    secret               bytea,
    status               text NOT NULL
        CHECK (status IN ('PENDING', 'RECEIVED', 'DONE', 'ERROR', 'EXPIRED', 'CANCEL')),
    results              jsonb NOT NULL DEFAULT '[]',
    push_id              text,
    sent_at              timestamptz,
    delivery_expires_at  timestamptz,
    push_attempts        integer NOT NULL DEFAULT 0,
    pushes               integer NOT NULL DEFAULT 0,
    next_push_at         timestamptz,
    push_lease_until     timestamptz,
    error_type           text,
    error_message        text,
    duration_s           integer NOT NULL,
    expires_at           timestamptz NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    finished_at          timestamptz,
    source               text NOT NULL DEFAULT 'kafka',
    user_name            text
);

-- expiry timer: open commands by deadline
CREATE INDEX commands_open_expires ON commands (expires_at)
    WHERE status IN ('PENDING', 'RECEIVED');
-- push claim: pushes due
CREATE INDEX commands_push_due ON commands (next_push_at)
    WHERE status = 'PENDING' AND next_push_at IS NOT NULL;
-- per-device order of open commands, and un-parking when a token arrives
CREATE INDEX commands_device_open ON commands (aos_device, created_at, seq)
    WHERE status IN ('PENDING', 'RECEIVED');
-- API listing of a device's commands, newest first
CREATE INDEX commands_device_list ON commands (aos_device, created_at DESC, id);

-- Transactional outbox of mdm.commands.status: written in the same transaction as the
-- transition, relayed to Kafka and deleted after the broker acknowledged it.
CREATE TABLE status_outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id   text NOT NULL,
    aos_device   text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Acks and cancels that arrived before their command: applied when it arrives,
-- dead-lettered after the hold window.
CREATE TABLE held_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('ack', 'cancel')),
    command_id   text NOT NULL,
    payload      jsonb NOT NULL,
    source       jsonb NOT NULL,
    held_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX held_events_command ON held_events (command_id);
CREATE INDEX held_events_held_at ON held_events (held_at);

-- commands parked until their device has a push token (or an earlier command is sent)
CREATE INDEX commands_parked ON commands (aos_device)
    WHERE status = 'PENDING' AND next_push_at IS NULL AND sent_at IS NULL;

-- The payload of mdm.commands.status for a command row and its previous status.
CREATE FUNCTION dispatcher_ts(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

CREATE FUNCTION dispatcher_status_event(
    id text, organization text, aos_device text, command text, status text, previous text,
    at timestamptz, push_id text, error_type text, error_message text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT jsonb_build_object(
    'id', id, 'organization', organization, 'aosDevice', aos_device,
    'command', command, 'status', status, 'previousStatus', previous,
    'at', dispatcher_ts(at), 'pushId', push_id,
    'errorType', error_type, 'errorMessage', error_message) $$;
