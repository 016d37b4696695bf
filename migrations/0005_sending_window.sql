-- Crash safety (issue 6): which run holds a recipient in its sending window,
-- and which recipients may have been accepted by a server more often than
-- the ledger's state says.

-- sending_job: the River job whose run marked the row sending (NULL when
-- not sending). A row still sending whose job is no longer running, or has
-- run longer than the rescue time, was left by a worker that died.
ALTER TABLE deliveries ADD COLUMN sending_job bigint;

-- ambiguous: attempts whose outcome blaster could not know: the reply to
-- the final "." was lost, or the worker died while the recipient's
-- transaction may have been in flight. Under at-most-once such a recipient
-- is left unknown; under at-least-once it is sent again, and ambiguous > 0
-- on a sent row says the server may have accepted it more than once.
ALTER TABLE deliveries ADD COLUMN ambiguous integer NOT NULL DEFAULT 0;

-- The sweep finds orphaned sending rows without scanning the campaign, and
-- a run writes its outcomes through this index alone. campaign_id is in it
-- because those writes also say campaign_id = $1: with sending_job alone the
-- planner ANDed this index with deliveries_batch's campaign_id range, which
-- at 1M recipients read the whole campaign's index entries for every
-- 100-recipient write (0.99 ms of PostgreSQL CPU per recipient instead of
-- 0.06, `make bench`).
CREATE INDEX deliveries_sending ON deliveries (sending_job, campaign_id) WHERE state = 'sending';

-- rescued_job: the last dead run (River job still running past the rescue
-- time: its worker was killed) the sweep enqueued this batch again for, so
-- it does so once per dead run, not at every sweep until River's rescuer
-- gets to the dead job.
ALTER TABLE batches ADD COLUMN rescued_job bigint;
