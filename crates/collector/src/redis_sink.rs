//! Redis sink: one Lua script per batch adds every event to its stream
//! `mining:<type>` under the journal's stream id, publishes new blocks on
//! `blocks:found`, and stores the cursor, atomically. A replayed entry is
//! refused by XADD (its id is not above the stream top) and counted as
//! already written.

use redis::aio::MultiplexedConnection;
use redis::Script;

use crate::{CollectorError, ParsedRecord};

/// Key holding the Redis sink's cursor.
pub const CURSOR_KEY: &str = "tbg:collector:cursor:redis";
/// Pub/sub channel of found blocks.
pub const BLOCKS_CHANNEL: &str = "blocks:found";
/// Default approximate stream length (the plan's `MAXLEN ~ 100000`).
pub const DEFAULT_STREAM_MAXLEN: u64 = 100_000;

const WRITE_BATCH_LUA: &str = r#"
local maxlen = ARGV[1]
local count = tonumber(ARGV[4])
local added = 0
local base = 5
for _ = 1, count do
  local result = redis.pcall('XADD', ARGV[base], 'MAXLEN', '~', maxlen, ARGV[base + 1],
    'event', ARGV[base + 2], 'ts', ARGV[base + 3], 'source', ARGV[base + 4],
    'region', ARGV[base + 5], 'id', ARGV[base + 6], 'data', ARGV[base + 7])
  if type(result) == 'table' and result.err then
    if not string.find(result.err, 'equal or smaller than the target stream top item', 1, true) then
      return redis.error_reply(result.err)
    end
  else
    added = added + 1
    if ARGV[base + 8] ~= '' then
      redis.call('PUBLISH', ARGV[3], ARGV[base + 8])
    end
  end
  base = base + 9
end
redis.call('SET', ARGV[2], ARGV[5 + count * 9] or '0')
return added
"#;

/// Connects to Redis.
pub async fn connect(url: &str) -> Result<MultiplexedConnection, CollectorError> {
    let client = redis::Client::open(url).map_err(CollectorError::redis("parsing the url"))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(CollectorError::redis("connecting"))
}

/// The Redis sink's cursor (0 when the key is missing, e.g. after Redis lost
/// its data: the sink then rebuilds the streams from the journal).
pub async fn read_cursor(connection: &mut MultiplexedConnection) -> Result<u64, CollectorError> {
    let value: Option<u64> = redis::cmd("GET")
        .arg(CURSOR_KEY)
        .query_async(connection)
        .await
        .map_err(CollectorError::redis("reading the cursor"))?;
    Ok(value.unwrap_or(0))
}

/// Sets the cursor (replay).
pub async fn set_cursor(
    connection: &mut MultiplexedConnection,
    seq: u64,
) -> Result<(), CollectorError> {
    redis::cmd("SET")
        .arg(CURSOR_KEY)
        .arg(seq)
        .query_async::<()>(connection)
        .await
        .map_err(CollectorError::redis("setting the cursor"))
}

/// Writes batches with a cached script.
pub struct RedisWriter {
    script: Script,
    maxlen: u64,
}

impl RedisWriter {
    pub fn new(maxlen: u64) -> RedisWriter {
        RedisWriter {
            script: Script::new(WRITE_BATCH_LUA),
            maxlen,
        }
    }

    /// Writes one batch and sets the cursor to `cursor`; returns how many
    /// entries were new (the rest were already in their streams).
    pub async fn write_batch(
        &self,
        connection: &mut MultiplexedConnection,
        batch: &[ParsedRecord],
        cursor: u64,
    ) -> Result<u64, CollectorError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(self.maxlen)
            .arg(CURSOR_KEY)
            .arg(BLOCKS_CHANNEL)
            .arg(batch.len());
        for record in batch {
            let event_type = record.event.event_type();
            let block_message = if event_type == "block_found" {
                record.payload.as_str()
            } else {
                ""
            };
            invocation
                .arg(format!("mining:{event_type}"))
                .arg(&record.stream_id)
                .arg(event_type)
                .arg(format!("{:.6}", record.ts))
                .arg(&record.event.source)
                .arg(&record.region)
                .arg(&record.event_id)
                .arg(record.data_json())
                .arg(block_message);
        }
        invocation.arg(cursor);
        invocation
            .invoke_async::<u64>(connection)
            .await
            .map_err(CollectorError::redis("writing a batch"))
    }
}
