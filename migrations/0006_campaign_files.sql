-- Campaign attachments (package campaign, files.go). Their content lives in
-- the database, not on the operator's disk, so a worker on any machine can
-- send them: each worker copies a campaign's files once into its own spool
-- directory and streams every message's attachment from there.
--
-- bytea rather than large objects: a row goes and comes with its campaign
-- (one transaction at create time, ON DELETE CASCADE, pg_dump and
-- replication as any table), with no orphaned large object to lo_unlink.
-- The 1 GB bytea limit is far above the per-campaign cap (25 MiB,
-- campaign.MaxAttachmentBytes, checked at create time). STORAGE EXTERNAL
-- keeps the value uncompressed in TOAST, so substring() reads only the
-- chunks asked for: workers copy a file in 1 MiB slices, never whole.
CREATE TABLE campaign_files (
    campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),  -- order in the message
    name        text    NOT NULL,                        -- Content-Disposition filename
    media_type  text    NOT NULL,                        -- Content-Type
    size        bigint  NOT NULL CHECK (size >= 0),
    sha256      bytea   NOT NULL,                        -- checked after each copy
    content     bytea   NOT NULL,
    PRIMARY KEY (campaign_id, position)
);
ALTER TABLE campaign_files ALTER COLUMN content SET STORAGE EXTERNAL;
