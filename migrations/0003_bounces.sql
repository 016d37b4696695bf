-- Asynchronous bounces (package bounce): one row per bounce message and
-- recipient it reports on. The unique key makes feeding the same
-- notification twice (a Maildir read again, an mbox, the SMTP receiver and a
-- mailbox copy of one DSN) count once.
CREATE TABLE bounce_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- dsn_key identifies the bounce message: 'mid:' || its Message-ID, or
    -- 'sha256:' || the hash of the message when it has none.
    dsn_key     text        NOT NULL,
    campaign_id bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- contact_id is NULL when the reported address is no recipient of the
    -- campaign (a forwarded address behind a campaign-level return path).
    contact_id  bigint      REFERENCES contacts (id) ON DELETE SET NULL,
    email       text        NOT NULL,  -- lower-cased, as reported or as the ledger has it
    class       text        NOT NULL CHECK (class IN ('hard', 'soft')),
    action      text        NOT NULL DEFAULT '',  -- RFC 3464 §2.3.3
    status      text        NOT NULL DEFAULT '',  -- enhanced status code, RFC 3463
    smtp_code   integer,                          -- the remote reply's code, if given
    diagnostic  text        NOT NULL DEFAULT '',  -- the remote reply's text
    reason      text        NOT NULL DEFAULT '',  -- diagnostic normalized for grouping
    -- standard: from an RFC 3464 delivery-status part; false when read from
    -- a non-standard bounce's text.
    standard    boolean     NOT NULL,
    source      text        NOT NULL DEFAULT '',  -- maildir file, mbox:line, stdin, smtp peer
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dsn_key, campaign_id, email)
);
CREATE INDEX bounce_events_campaign ON bounce_events (campaign_id, contact_id);
