-- mining_events: the (event_type, ts) btree cost 10-20 % of every insert
-- (issue 3 throughput) and no query uses it: the plan's
-- `SELECT event_type, COUNT(*) FROM mining_events GROUP BY event_type` reads
-- the whole table either way. Time-range reads inside a day partition get a
-- BRIN index on ts instead, nearly free to maintain for rows that arrive in
-- time order. (TimescaleDB hypertables already have their own ts index.)
DROP INDEX IF EXISTS mining_events_type_ts;
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('mining_events')) THEN
        EXECUTE 'CREATE INDEX mining_events_ts_brin ON mining_events USING brin (ts)';
    END IF;
END
$migration$;

-- What the nodes answered to a found block (`block_submitted`): `confirmed`
-- is whether a node took it; NULL submitted_at means not answered yet.
ALTER TABLE blocks
    ADD COLUMN submitted_at timestamptz,
    ADD COLUMN node_answers text[];
CREATE INDEX blocks_hash ON blocks (block_hash);

-- The aggregate tables are rewritten row by row with every batch: with
-- free room on each page the new row versions stay on their page (HOT
-- updates: no index entries, old versions pruned in place), which halved
-- the upsert time in a test of 40 batches of 1,000 addresses and kept the
-- table 8x smaller. Takes effect for pages written from now on.
ALTER TABLE users SET (fillfactor = 70);
ALTER TABLE workers SET (fillfactor = 70);
ALTER TABLE weekly_best_diff SET (fillfactor = 70);
ALTER TABLE hourly_shares SET (fillfactor = 70);
ALTER TABLE daily_shares SET (fillfactor = 70);
