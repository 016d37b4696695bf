-- blaster's own schema. River's tables live in the same database (river_*),
-- applied first by `blaster migrate` under the same advisory lock.

-- Contacts: one row per address, unique case-insensitively. The local part is
-- kept as imported (RFC 5321 §2.4: it may be case-sensitive); the domain is
-- stored lower-cased in A-label form.
CREATE TABLE contacts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text        NOT NULL,
    name        text        NOT NULL DEFAULT '',
    attrs       jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX contacts_email_key ON contacts (lower(email));

CREATE TABLE lists (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE list_members (
    list_id     bigint      NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    contact_id  bigint      NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, contact_id)
);
CREATE INDEX list_members_contact ON list_members (contact_id);

-- Suppressions: one list per sender (the lower-cased From address of a
-- campaign); sender '' suppresses the address for every sender (hard bounces,
-- complaints, manual blocks).
CREATE TABLE suppressions (
    sender      text        NOT NULL DEFAULT '',
    email       text        NOT NULL,  -- lower-cased
    reason      text        NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
    detail      text        NOT NULL DEFAULT '',
    campaign_id bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, email)
);
CREATE INDEX suppressions_email ON suppressions (email);

CREATE TABLE campaigns (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    kind         text        NOT NULL DEFAULT 'newsletter' CHECK (kind IN ('newsletter', 'alert')),
    list_id      bigint      REFERENCES lists (id),
    from_addr    text        NOT NULL,
    subject      text        NOT NULL,
    text_body    text        NOT NULL DEFAULT '',
    html_body    text        NOT NULL DEFAULT '',
    -- personalized: the subject or a body reads contact data, so the message
    -- is built and sent per recipient; otherwise one transaction per batch.
    personalized boolean     NOT NULL,
    state        text        NOT NULL DEFAULT 'draft'
                 CHECK (state IN ('draft', 'running', 'paused', 'done', 'cancelled')),
    -- settings: the delivery policy (max_rcpt, retry schedule, max age,
    -- at-least-once, ...) as campaign.Settings in JSON.
    settings     jsonb       NOT NULL DEFAULT '{}',
    total        integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);

-- Batches: recipients of one campaign bound for one destination domain, at
-- most max_rcpt (default 100, RFC 5321 §4.5.3.1.8) of them. One River
-- send_batch job per batch; its args carry only (campaign_id, batch_no).
CREATE TABLE batches (
    campaign_id bigint  NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    batch_no    integer NOT NULL,
    domain      text    NOT NULL,
    size        integer NOT NULL,
    -- done: none of the batch's deliveries is queued, sending or deferred.
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (campaign_id, batch_no)
);
-- "Is any batch of this campaign unfinished?" is one index probe.
CREATE INDEX batches_pending ON batches (campaign_id) WHERE NOT done;

-- Deliveries: the per-recipient ledger, one row per campaign x contact.
--   queued -> sending -> sent | deferred -> ... | bounced | expired | unknown
--   suppressed (left out at start), cancelled (never attempted, campaign cancelled)
CREATE TABLE deliveries (
    campaign_id     bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    contact_id      bigint      NOT NULL REFERENCES contacts (id),
    batch_no        integer,    -- NULL for suppressed recipients
    email           text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'deferred', 'bounced',
                                                          'expired', 'suppressed', 'unknown', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_code       integer,    -- SMTP reply code of the last attempt (RFC 5321 §4.2)
    last_enhanced   text,       -- enhanced status code, e.g. 5.1.1 (RFC 3463)
    last_text       text,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    PRIMARY KEY (campaign_id, contact_id)
);
CREATE INDEX deliveries_batch ON deliveries (campaign_id, batch_no);
