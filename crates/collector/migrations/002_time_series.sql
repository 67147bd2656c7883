-- mining_events and shares: TimescaleDB hypertables when the extension is
-- available, otherwise native daily range partitions created ahead by the
-- collector (tbg_ensure_day_partition) and dropped by tbg_drop_expired_partitions.
-- A unique key on a partitioned table must contain the partition key, so the
-- idempotency key is (event_id, ts): the ts comes from the journal, so it is
-- the same on every replay.
DO $migration$
DECLARE
    has_timescale boolean := EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb');
    partition_clause_events text := '';
    partition_clause_shares text := '';
BEGIN
    IF NOT has_timescale THEN
        partition_clause_events := ' PARTITION BY RANGE (ts)';
        partition_clause_shares := ' PARTITION BY RANGE (time)';
    END IF;

    EXECUTE 'CREATE TABLE mining_events (
        ts         timestamptz NOT NULL,
        event_id   text NOT NULL,
        event_type text NOT NULL,
        source     text NOT NULL,
        region     text NOT NULL,
        payload    jsonb NOT NULL,
        UNIQUE (event_id, ts)
    )' || partition_clause_events;
    EXECUTE 'CREATE INDEX mining_events_type_ts ON mining_events (event_type, ts DESC)';

    EXECUTE 'CREATE TABLE shares (
        time          timestamptz NOT NULL,
        btc_address   text NOT NULL,
        worker_name   text NOT NULL,
        difficulty    double precision,
        share_diff    double precision,
        is_valid      boolean NOT NULL,
        is_block      boolean NOT NULL DEFAULT false,
        ip_address    text NOT NULL,
        source        text NOT NULL,
        region        text NOT NULL,
        event_id      text NOT NULL,
        reject_reason text,
        UNIQUE (event_id, time)
    )' || partition_clause_shares;
    EXECUTE 'CREATE INDEX shares_address_time ON shares (btc_address, time DESC)';

    IF has_timescale THEN
        EXECUTE 'CREATE EXTENSION IF NOT EXISTS timescaledb';
        EXECUTE $ts$SELECT create_hypertable('mining_events', 'ts', chunk_time_interval => INTERVAL '1 day')$ts$;
        EXECUTE $ts$SELECT create_hypertable('shares', 'time', chunk_time_interval => INTERVAL '1 day')$ts$;
        EXECUTE $ts$ALTER TABLE mining_events SET (timescaledb.compress, timescaledb.compress_segmentby = 'event_type')$ts$;
        EXECUTE $ts$ALTER TABLE shares SET (timescaledb.compress, timescaledb.compress_segmentby = 'btc_address')$ts$;
        EXECUTE $ts$SELECT add_compression_policy('mining_events', INTERVAL '3 days')$ts$;
        EXECUTE $ts$SELECT add_compression_policy('shares', INTERVAL '7 days')$ts$;
        EXECUTE $ts$SELECT add_retention_policy('mining_events', INTERVAL '30 days')$ts$;
        EXECUTE $ts$SELECT add_retention_policy('shares', INTERVAL '90 days')$ts$;
    END IF;
END
$migration$;

-- Creates the UTC day partition of `parent` holding `day`; a no-op when the
-- table is not natively partitioned (TimescaleDB manages its own chunks).
CREATE FUNCTION tbg_ensure_day_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    partition_name text := parent || '_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(parent)) THEN
        RETURN;
    END IF;
    IF to_regclass(partition_name) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            partition_name, parent,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
END
$fn$;

-- Drops the day partitions of `parent` that end before now() - keep; returns
-- how many were dropped. A no-op without native partitioning.
CREATE FUNCTION tbg_drop_expired_partitions(parent text, keep interval) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    child record;
    dropped integer := 0;
    day date;
BEGIN
    FOR child IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(parent)
          AND c.relname ~ ('^' || parent || '_p[0-9]{8}$')
    LOOP
        day := to_date(right(child.relname, 8), 'YYYYMMDD');
        IF ((day + 1)::timestamp AT TIME ZONE 'UTC') <= now() - keep THEN
            EXECUTE format('DROP TABLE %I', child.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$fn$;
