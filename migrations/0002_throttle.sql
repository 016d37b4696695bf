-- Throttle state shared by every worker process (package throttle).

-- Token buckets, one per limited scope and kind of budget. name is the scope
-- ("global", "route:NAME", "domain:NAME", "campaign:ID") for its whole rate,
-- scope + '/bulk' for the newsletter share (the rest is reserved for alerts),
-- scope + '/conn' for its connection rate. Refill is lazy: a lease computes
-- tokens + rate x factor x (now - updated_at), capped at burst, in the same
-- UPDATE that takes its slice.
CREATE TABLE throttle_buckets (
    name       text        PRIMARY KEY,
    scope      text        NOT NULL,
    rate       float8      NOT NULL CHECK (rate > 0),    -- configured tokens per second
    burst      float8      NOT NULL CHECK (burst >= 1),  -- bucket size, tokens
    tokens     float8      NOT NULL,                     -- at updated_at
    updated_at timestamptz NOT NULL
);

-- Adaptive state of a scope, written when a back-off rule matches a reply.
CREATE TABLE throttle_scopes (
    scope           text        PRIMARY KEY,
    -- factor: the share of the configured rate in force (1 = full rate).
    factor          float8      NOT NULL DEFAULT 1 CHECK (factor > 0 AND factor <= 1),
    suspended_until timestamptz,           -- no transaction before this time
    hold_until      timestamptz NOT NULL,  -- no recovery step before this time
    step_at         timestamptz NOT NULL,  -- last recovery step (or hold end)
    rule            text        NOT NULL DEFAULT '',  -- the rule that matched
    reason          text        NOT NULL DEFAULT '',  -- the reply or error
    reason_at       timestamptz NOT NULL
);

-- Connections each worker process holds per scope, published every sync
-- interval; rows not refreshed for a few intervals belong to dead processes
-- and are ignored.
CREATE TABLE throttle_conns (
    owner      text        NOT NULL,  -- host:pid:random
    scope      text        NOT NULL,
    n          integer     NOT NULL CHECK (n >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, scope)
);
