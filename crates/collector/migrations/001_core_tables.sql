-- Tables that are small or keyed by address: plain tables on every server.
CREATE TABLE collector_cursor (
    sink       text PRIMARY KEY,
    seq        bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO collector_cursor (sink, seq) VALUES ('postgres', 0);

CREATE TABLE blocks (
    block_height       bigint NOT NULL,
    block_hash         text NOT NULL,
    "user"             text NOT NULL,
    worker_name        text NOT NULL,
    reward             bigint NOT NULL,
    difficulty         double precision,
    network_difficulty double precision,
    confirmed          boolean NOT NULL DEFAULT false,
    coinbase_sig       text NOT NULL,
    source             text NOT NULL,
    region             text NOT NULL,
    found_at           timestamptz NOT NULL,
    event_id           text NOT NULL UNIQUE
);
CREATE INDEX blocks_user ON blocks ("user", found_at DESC);
CREATE INDEX blocks_height ON blocks (block_height);

CREATE TABLE users (
    btc_address     text PRIMARY KEY,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    total_shares    bigint NOT NULL DEFAULT 0,
    accepted_shares bigint NOT NULL DEFAULT 0,
    rejected_shares bigint NOT NULL DEFAULT 0,
    best_difficulty double precision,
    blocks_found    bigint NOT NULL DEFAULT 0
);

CREATE TABLE workers (
    "user"      text NOT NULL,
    worker_name text NOT NULL,
    hashrate_1m double precision,
    hashrate_5m double precision,
    hashrate_1h double precision,
    hashrate_24h double precision,
    is_online   boolean NOT NULL DEFAULT false,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    source      text NOT NULL,
    region      text NOT NULL,
    PRIMARY KEY ("user", worker_name)
);

CREATE TABLE weekly_best_diff (
    btc_address     text NOT NULL,
    week_start      date NOT NULL,
    best_difficulty double precision,
    total_shares    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (btc_address, week_start)
);

-- Maintained by the collector from newly inserted shares only, so a replay
-- cannot count twice. Averages are over accepted shares.
CREATE TABLE hourly_shares (
    btc_address    text NOT NULL,
    bucket         timestamptz NOT NULL,
    share_count    bigint NOT NULL DEFAULT 0,
    accepted       bigint NOT NULL DEFAULT 0,
    rejected       bigint NOT NULL DEFAULT 0,
    best_share_diff double precision,
    sum_share_diff double precision NOT NULL DEFAULT 0,
    avg_share_diff double precision GENERATED ALWAYS AS
        (CASE WHEN accepted > 0 THEN sum_share_diff / accepted END) STORED,
    PRIMARY KEY (btc_address, bucket)
);
CREATE INDEX hourly_shares_bucket ON hourly_shares (bucket);

CREATE TABLE daily_shares (
    btc_address    text NOT NULL,
    day            date NOT NULL,
    share_count    bigint NOT NULL DEFAULT 0,
    accepted       bigint NOT NULL DEFAULT 0,
    rejected       bigint NOT NULL DEFAULT 0,
    best_share_diff double precision,
    sum_share_diff double precision NOT NULL DEFAULT 0,
    avg_share_diff double precision GENERATED ALWAYS AS
        (CASE WHEN accepted > 0 THEN sum_share_diff / accepted END) STORED,
    PRIMARY KEY (btc_address, day)
);
CREATE INDEX daily_shares_day ON daily_shares (day);
