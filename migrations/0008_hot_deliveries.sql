-- Sending without index writes (issue 7). A worker updates every delivery
-- twice (mark it sending, then write its outcome). While deliveries had an
-- index on state (deliveries_sending, partial on state = 'sending'), neither
-- update could be HOT: each wrote a new entry into every index of the table.
-- With no index on a column the worker changes, and room left on each page
-- for the new row versions, both updates are HOT: one heap record, no index
-- entries (BENCHMARKS.md, "End to end": 75-82 % of the updates HOT and about a
-- third less PostgreSQL time per mark on the benchmark).

-- batches.sending_job: the job of the last run that marked recipients of the
-- batch sending; NULL once none of them is sending. It replaces the index
-- as the orphan sweep's way in: the sweep reads the batches whose marking
-- job is dead, then only their deliveries (deliveries_batch). A mark sets
-- it in the same transaction as it marks, after locking the batch row; it
-- is cleared under that lock (by the run's record, or the sweep) only when
-- no delivery of the batch is sending. So a sending delivery always has
-- its batch's sending_job set.
ALTER TABLE batches ADD COLUMN sending_job bigint;

UPDATE batches b SET sending_job = s.sending_job
FROM (SELECT DISTINCT ON (campaign_id, batch_no) campaign_id, batch_no, sending_job
      FROM deliveries WHERE state = 'sending'
      ORDER BY campaign_id, batch_no, sending_job) s
WHERE b.campaign_id = s.campaign_id AND b.batch_no = s.batch_no;

CREATE INDEX batches_sending ON batches (sending_job) WHERE sending_job IS NOT NULL;

DROP INDEX deliveries_sending;

-- Half of each page is left free when fan-out fills it: room for the two
-- new versions of its rows, which HOT pruning reclaims on the page.
-- (fillfactor 70 made about half the updates HOT, 50 made 75-82 % HOT.) The
-- table takes twice the pages; only new pages are affected.
ALTER TABLE deliveries SET (fillfactor = 50);
