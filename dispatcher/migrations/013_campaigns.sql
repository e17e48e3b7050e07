-- 013: campaigns, one command for many devices, released in waves (CONTRACT.md
-- "mdm.campaigns.*", dispatcher/campaigns.py).
--
-- A campaign's commands are ordinary commands with `campaign` and `wave` set. A command
-- of a wave not yet released is held: not_before, next_push_at and expires_at are
-- 'infinity' (never due, not in its device's order, never expired); releasing its wave
-- gives it the release time as notBefore and its validity from then. Its targets are a
-- snapshot taken when the campaign is accepted (campaign_targets, in target order),
-- turned into commands a page at a time and deleted as they are, so a campaign over a
-- million devices is never one list in memory.

ALTER TABLE commands ADD COLUMN campaign text, ADD COLUMN wave integer;

-- a campaign's commands by wave and status: release, halt, cancel and the counts are
-- index probes of the campaign's own rows
CREATE INDEX commands_campaign ON commands (campaign, wave, status) WHERE campaign IS NOT NULL;

-- {"all": true}: the ACTIVE devices of an enterprise
CREATE INDEX devices_enterprise_active ON devices (aos_enterprise, aos_device)
    WHERE state = 'ACTIVE';

CREATE TABLE campaigns (
    id              text PRIMARY KEY,
    organization    text NOT NULL,
    aos_enterprise  text NOT NULL,
    command         text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    secret          bytea,
    duration_s      integer NOT NULL,
    duration_nanos  integer NOT NULL DEFAULT 0,
    not_before      timestamptz,
    target_all      boolean NOT NULL,
    wave_size       integer CHECK (wave_size > 0),   -- NULL: one wave
    interval_s      float8 NOT NULL DEFAULT 0,
    max_error_rate  float8,                          -- NULL: never halts
    state           text NOT NULL DEFAULT 'RUNNING'
        CHECK (state IN ('RUNNING', 'HALTED', 'DONE', 'CANCELLED')),
    targets         integer NOT NULL DEFAULT 0,
    expanded        integer NOT NULL DEFAULT 0,      -- targets made into commands
    waves_released  integer NOT NULL DEFAULT 1,
    next_release_at timestamptz,
    counts          jsonb NOT NULL DEFAULT '{}',
    counted_at      timestamptz,
    reported        jsonb,                           -- the last status event's state and counts
    reported_at     timestamptz,
    settled         boolean NOT NULL DEFAULT false,  -- nothing left to do: counts are final
    halt_reason     text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    created_by      text,
    cancelled_by    text,
    source          text NOT NULL
);
CREATE INDEX campaigns_active ON campaigns (id) WHERE NOT settled;
CREATE INDEX campaigns_listing ON campaigns (organization, created_at DESC, id DESC);

CREATE TABLE campaign_targets (
    campaign    text NOT NULL,
    seq         integer NOT NULL,
    aos_device  text NOT NULL,
    PRIMARY KEY (campaign, seq)
);

-- mdm.campaigns.status goes through the same outbox as mdm.commands.status: `topic`
-- names the topic (NULL: commands.status), aos_device holds the key.
ALTER TABLE status_outbox ADD COLUMN topic text;

-- The released part of a campaign: the targets of the waves released so far.
CREATE FUNCTION dispatcher_campaign_released(c campaigns) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN c.wave_size IS NULL THEN c.targets
                ELSE least(c.targets, c.wave_size::bigint * c.waves_released)::int END $$;

CREATE FUNCTION dispatcher_campaign_event(c campaigns) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', c.id, 'organization', c.organization, 'command', c.command, 'state', c.state,
        'targets', c.targets, 'released', dispatcher_campaign_released(c),
        'counts', jsonb_build_object(
            'PENDING', coalesce((c.counts->>'PENDING')::int, 0),
            'RECEIVED', coalesce((c.counts->>'RECEIVED')::int, 0),
            'DONE', coalesce((c.counts->>'DONE')::int, 0),
            'ERROR', coalesce((c.counts->>'ERROR')::int, 0),
            'EXPIRED', coalesce((c.counts->>'EXPIRED')::int, 0),
            'CANCEL', coalesce((c.counts->>'CANCEL')::int, 0)),
        'at', dispatcher_ts(now())) $$;

-- Status events name the campaign of a campaign's command.
CREATE OR REPLACE FUNCTION dispatcher_emit_moved(moved commands[], previous text[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO status_outbox (command_id, aos_device, payload)
    SELECT m.id, m.aos_device, dispatcher_status_event(m.id, m.organization, m.aos_device,
           m.command, m.status, m.unnest, m.updated_at, m.push_id, m.error_type,
           m.error_message, m.created_by, m.cancelled_by)
           || CASE WHEN m.campaign IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('campaign', m.campaign) END
    -- unnest of two arrays: the commands' columns, then previous (named "unnest")
    FROM unnest(moved, previous) AS m
$$;
