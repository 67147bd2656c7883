//! The stores a sink writes to, behind one trait: PostgreSQL and Redis,
//! each holding its connection (dropped on error, made again on the next
//! step) and its writer.

use super::SinkKind;
use crate::postgres::{self, PostgresWriter};
use crate::redis_sink::{self, RedisWriter};
use crate::{CollectorError, ParsedRecord};

/// One store a sink writes to; `connect` also returns the stored cursor.
pub(super) trait Store: Send + 'static {
    const KIND: SinkKind;
    fn connected(&self) -> bool;
    async fn connect(&mut self) -> Result<u64, CollectorError>;
    fn disconnect(&mut self);
    async fn set_cursor(&mut self, seq: u64) -> Result<(), CollectorError>;
    /// Writes the batch and the cursor atomically; returns how many events were new.
    async fn write(&mut self, batch: &[ParsedRecord], cursor: u64) -> Result<u64, CollectorError>;
    /// Periodic upkeep (partitions); a no-op by default.
    async fn maintain(&mut self) -> Result<(), CollectorError> {
        Ok(())
    }
}

pub(super) struct PostgresStore {
    conninfo: String,
    client: Option<tokio_postgres::Client>,
    writer: PostgresWriter,
}

impl PostgresStore {
    pub(super) fn new(conninfo: String) -> PostgresStore {
        PostgresStore {
            conninfo,
            client: None,
            writer: PostgresWriter::new(),
        }
    }
}

impl Store for PostgresStore {
    const KIND: SinkKind = SinkKind::Postgres;

    fn connected(&self) -> bool {
        self.client
            .as_ref()
            .is_some_and(|client| !client.is_closed())
    }

    async fn connect(&mut self) -> Result<u64, CollectorError> {
        self.client = None;
        let mut client = postgres::connect(&self.conninfo).await?;
        let cursor = self.writer.prepare(&mut client).await?;
        self.client = Some(client);
        Ok(cursor)
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.writer.reset();
    }

    async fn set_cursor(&mut self, seq: u64) -> Result<(), CollectorError> {
        match &self.client {
            Some(client) => postgres::set_cursor(client, seq).await,
            None => Err(CollectorError::Source("not connected".into())),
        }
    }

    async fn write(&mut self, batch: &[ParsedRecord], cursor: u64) -> Result<u64, CollectorError> {
        match &mut self.client {
            Some(client) => Ok(self
                .writer
                .write_batch(client, batch, cursor)
                .await?
                .inserted),
            None => Err(CollectorError::Source("not connected".into())),
        }
    }

    async fn maintain(&mut self) -> Result<(), CollectorError> {
        match &mut self.client {
            Some(client) => self.writer.maintain(client).await.map(|_| ()),
            None => Err(CollectorError::Source("not connected".into())),
        }
    }
}

pub(super) struct RedisStore {
    url: String,
    connection: Option<redis::aio::MultiplexedConnection>,
    writer: RedisWriter,
}

impl RedisStore {
    pub(super) fn new(url: String, stream_maxlen: u64) -> RedisStore {
        RedisStore {
            url,
            connection: None,
            writer: RedisWriter::new(stream_maxlen),
        }
    }
}

impl Store for RedisStore {
    const KIND: SinkKind = SinkKind::Redis;

    fn connected(&self) -> bool {
        self.connection.is_some()
    }

    async fn connect(&mut self) -> Result<u64, CollectorError> {
        self.connection = None;
        let mut connection = redis_sink::connect(&self.url).await?;
        let cursor = redis_sink::read_cursor(&mut connection).await?;
        self.connection = Some(connection);
        Ok(cursor)
    }

    fn disconnect(&mut self) {
        self.connection = None;
    }

    async fn set_cursor(&mut self, seq: u64) -> Result<(), CollectorError> {
        match &mut self.connection {
            Some(connection) => redis_sink::set_cursor(connection, seq).await,
            None => Err(CollectorError::Source("not connected".into())),
        }
    }

    async fn write(&mut self, batch: &[ParsedRecord], cursor: u64) -> Result<u64, CollectorError> {
        match &mut self.connection {
            Some(connection) => self.writer.write_batch(connection, batch, cursor).await,
            None => Err(CollectorError::Source("not connected".into())),
        }
    }
}
