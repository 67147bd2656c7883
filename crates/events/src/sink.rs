//! Where events go. A sink never blocks and never fails from the caller's
//! view: what cannot be delivered right now is dropped and counted.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::event::Event;

/// Anything that accepts events. `emit` must return promptly (no I/O waits,
/// no unbounded queues) and swallow its own failures, counting them.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: Event);

    /// `emit` for a caller that already holds `json`, the event's
    /// [`Event::to_json`]: a sink that sends JSON uses it instead of
    /// serializing the event again.
    fn emit_serialized(&self, event: Event, json: &str) {
        let _ = json;
        self.emit(event)
    }
}

impl<S: EventSink + ?Sized> EventSink for Arc<S> {
    fn emit(&self, event: Event) {
        (**self).emit(event)
    }

    fn emit_serialized(&self, event: Event, json: &str) {
        (**self).emit_serialized(event, json)
    }
}

impl<S: EventSink + ?Sized> EventSink for Box<S> {
    fn emit(&self, event: Event) {
        (**self).emit(event)
    }

    fn emit_serialized(&self, event: Event, json: &str) {
        (**self).emit_serialized(event, json)
    }
}

/// Discards everything (events disabled).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: Event) {}
}

/// Hands each event to several sinks, in order.
#[derive(Default)]
pub struct FanoutSink {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl FanoutSink {
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> FanoutSink {
        FanoutSink { sinks }
    }

    pub fn push(&mut self, sink: Arc<dyn EventSink>) {
        self.sinks.push(sink);
    }

    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl EventSink for FanoutSink {
    fn emit(&self, event: Event) {
        if let Some((last, rest)) = self.sinks.split_last() {
            for sink in rest {
                sink.emit(event.clone());
            }
            last.emit(event);
        }
    }

    fn emit_serialized(&self, event: Event, json: &str) {
        if let Some((last, rest)) = self.sinks.split_last() {
            for sink in rest {
                sink.emit_serialized(event.clone(), json);
            }
            last.emit_serialized(event, json);
        }
    }
}

/// Keeps the most recent events in a bounded ring (tests, status API).
/// When full, the oldest event is evicted and counted.
pub struct MemorySink {
    capacity: usize,
    events: Mutex<VecDeque<Event>>,
    evicted: AtomicU64,
}

impl MemorySink {
    /// `capacity` of at least 1.
    pub fn new(capacity: usize) -> MemorySink {
        let capacity = capacity.max(1);
        MemorySink {
            capacity,
            events: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            evicted: AtomicU64::new(0),
        }
    }

    /// Copies of the retained events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().iter().cloned().collect()
    }

    /// Removes and returns the retained events, oldest first.
    pub fn take(&self) -> Vec<Event> {
        self.events.lock().drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.lock().is_empty()
    }

    /// Events pushed out of the ring because it was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl EventSink for MemorySink {
    fn emit(&self, event: Event) {
        let mut events = self.events.lock();
        if events.len() >= self.capacity {
            events.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        events.push_back(event);
    }
}

/// Failure to set up a sink (emitting itself never fails).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create unix datagram socket for event path {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Delivery counters of a [`DatagramSink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub sent: u64,
    /// Socket path absent, or nothing bound to it.
    pub dropped_no_listener: u64,
    /// The listener's receive queue was full (it is slow or stuck).
    pub dropped_full: u64,
    /// Too big for one datagram, or any other send error.
    pub dropped_other: u64,
}

impl SinkStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_no_listener + self.dropped_full + self.dropped_other
    }
}

/// Largest event sent; bigger ones are dropped (counted in `dropped_other`).
/// Below Linux's default unix datagram limit (~208 KiB); real events are < 1 KiB.
pub const DEFAULT_MAX_DATAGRAM_BYTES: usize = 64 * 1024;

/// Sends one JSON object per datagram to a Unix datagram socket (the event
/// collector). The sender is non-blocking and stays connected to the
/// listener, so an event costs one `send` rather than a path lookup per
/// `sendto`. When the listener goes away (its process exits or the path is
/// removed) the sink drops the connection and connects again on a later
/// event: at once after a working connection fails, then at most once per
/// reconnect interval ([`DEFAULT_RECONNECT_INTERVAL`]) while nothing
/// listens, so a pool without a collector does not pay a failed lookup for
/// every share. A collector that comes back (same path) is picked up within
/// that interval.
pub struct DatagramSink {
    connection: RwLock<Connection>,
    max_datagram_bytes: usize,
    reconnect_interval: Duration,
    sent: AtomicU64,
    dropped_no_listener: AtomicU64,
    dropped_full: AtomicU64,
    dropped_other: AtomicU64,
}

/// The socket connected to the listener, or when to try connecting again.
struct Connection {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    next_attempt: Instant,
}

/// How often a sink without a listener tries to connect again.
pub const DEFAULT_RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// What one send attempt came to.
enum Outcome {
    Sent,
    /// The connection's listener is gone: reconnect.
    Disconnected,
    /// No listener, and the next connect attempt is not due yet.
    Waiting,
    Full,
    Other,
}

impl DatagramSink {
    /// The listener need not exist yet; events sent before it does are counted as drops.
    pub fn new(path: impl Into<PathBuf>) -> Result<DatagramSink, SinkError> {
        let path = path.into();
        // Created once up front so that a sink that cannot have a socket at
        // all (descriptor limit) is an error at start, not silent drops.
        let socket = new_socket().map_err(|source| SinkError::Socket {
            path: path.clone(),
            source,
        })?;
        let socket = socket.connect(&path).ok().map(|()| socket);
        Ok(DatagramSink {
            connection: RwLock::new(Connection {
                path,
                socket,
                next_attempt: Instant::now(),
            }),
            max_datagram_bytes: DEFAULT_MAX_DATAGRAM_BYTES,
            reconnect_interval: DEFAULT_RECONNECT_INTERVAL,
            sent: AtomicU64::new(0),
            dropped_no_listener: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_other: AtomicU64::new(0),
        })
    }

    pub fn with_max_datagram_bytes(mut self, max_datagram_bytes: usize) -> DatagramSink {
        self.max_datagram_bytes = max_datagram_bytes;
        self
    }

    /// How long a sink without a listener waits between connect attempts
    /// (zero: try on every event).
    pub fn with_reconnect_interval(mut self, reconnect_interval: Duration) -> DatagramSink {
        self.reconnect_interval = reconnect_interval;
        self
    }

    /// Where events go now.
    pub fn path(&self) -> PathBuf {
        self.connection.read().path.clone()
    }

    /// Sends to another path from the next event on (a configuration
    /// reload); returns whether it changed.
    pub fn set_path(&self, path: &Path) -> bool {
        let mut connection = self.connection.write();
        if connection.path == path {
            return false;
        }
        connection.path = path.to_path_buf();
        connection.socket = None;
        connection.next_attempt = Instant::now();
        true
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            sent: self.sent.load(Ordering::Relaxed),
            dropped_no_listener: self.dropped_no_listener.load(Ordering::Relaxed),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            dropped_other: self.dropped_other.load(Ordering::Relaxed),
        }
    }

    /// Sends already-serialized bytes as one datagram, counting the outcome.
    pub fn send_bytes(&self, payload: &[u8]) {
        if payload.len() > self.max_datagram_bytes {
            self.dropped_other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Senders share the connected socket under the read lock.
        let outcome = {
            let connection = self.connection.read();
            match &connection.socket {
                Some(socket) => send_on(socket, payload),
                // Not yet time to try again: no write lock, no lookup.
                None if Instant::now() < connection.next_attempt => Outcome::Waiting,
                None => Outcome::Disconnected,
            }
        };
        let outcome = match outcome {
            Outcome::Disconnected => self.reconnect_and_send(payload),
            other => other,
        };
        let counter = match outcome {
            Outcome::Sent => &self.sent,
            Outcome::Full => &self.dropped_full,
            Outcome::Other => &self.dropped_other,
            Outcome::Disconnected | Outcome::Waiting => &self.dropped_no_listener,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The listener was gone (or never there): connect again, unless the
    /// last attempt failed less than the reconnect interval ago.
    fn reconnect_and_send(&self, payload: &[u8]) -> Outcome {
        let mut connection = self.connection.write();
        if let Some(socket) = &connection.socket {
            match send_on(socket, payload) {
                // Another sender reconnected meanwhile.
                Outcome::Disconnected => {}
                other => return other,
            }
            // A working connection just failed: retry at once, it may be a
            // restarted listener.
            connection.socket = None;
            connection.next_attempt = Instant::now();
        }
        let now = Instant::now();
        if now < connection.next_attempt {
            return Outcome::Waiting;
        }
        let attempt =
            new_socket().and_then(|socket| socket.connect(&connection.path).map(|()| socket));
        match attempt {
            Ok(socket) => {
                let outcome = send_on(&socket, payload);
                connection.socket = Some(socket);
                outcome
            }
            Err(_) => {
                connection.next_attempt = now + self.reconnect_interval;
                Outcome::Disconnected
            }
        }
    }
}

fn new_socket() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn send_on(socket: &UnixDatagram, payload: &[u8]) -> Outcome {
    match socket.send(payload) {
        Ok(_) => Outcome::Sent,
        Err(error) => match error.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset => Outcome::Disconnected,
            io::ErrorKind::WouldBlock => Outcome::Full,
            _ if error.raw_os_error() == Some(ENOBUFS) => Outcome::Full,
            _ => Outcome::Other,
        },
    }
}

/// Linux "no buffer space available": the kernel's send side is out of room.
const ENOBUFS: i32 = 105;

impl EventSink for DatagramSink {
    fn emit(&self, event: Event) {
        self.send_bytes(event.to_json().as_bytes());
    }

    fn emit_serialized(&self, _event: Event, json: &str) {
        self.send_bytes(json.as_bytes());
    }
}
