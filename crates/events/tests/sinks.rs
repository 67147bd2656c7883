//! Sinks against real Unix datagram sockets: delivery, drops, recovery, never blocking.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tbg_events::*;

fn event(factory: &EventFactory, n: u64) -> Event {
    factory.make(EventData::ShareSubmitted {
        user: "bc1quser".into(),
        worker: format!("rig{n}"),
        client_id: n,
        diff: 1.0,
        sdiff: 1.5,
        accepted: true,
        reject_reason: None,
        ip: "127.0.0.1".into(),
    })
}

fn listener(path: &std::path::Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).expect("bind listener");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    socket
}

fn receive(socket: &UnixDatagram) -> Event {
    let mut buf = vec![0u8; 128 * 1024];
    let len = socket.recv(&mut buf).expect("datagram within 5 s");
    let text = std::str::from_utf8(&buf[..len]).expect("utf-8");
    Event::from_json(text).expect("one event per datagram")
}

#[test]
fn delivers_one_event_per_datagram() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let receiver = listener(&path);
    let sink = DatagramSink::new(&path).expect("sink");
    let factory = EventFactory::new("test", "hosted");
    let sent: Vec<Event> = (0..10).map(|n| event(&factory, n)).collect();
    for e in &sent {
        sink.emit(e.clone());
    }
    for e in &sent {
        assert_eq!(&receive(&receiver), e);
    }
    assert_eq!(
        sink.stats(),
        SinkStats {
            sent: 10,
            ..SinkStats::default()
        }
    );
}

#[test]
fn listener_removed_then_recreated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let factory = EventFactory::new("test", "hosted");
    // Retries the connection on every event, so each step is exact.
    let sink = DatagramSink::new(&path)
        .expect("sink works before the listener exists")
        .with_reconnect_interval(Duration::ZERO);

    // No socket file at all.
    sink.emit(event(&factory, 0));
    assert_eq!(sink.stats().dropped_no_listener, 1);

    let receiver = listener(&path);
    sink.emit(event(&factory, 1));
    assert_eq!(receive(&receiver).data, event(&factory, 1).data);

    // Listener closed but its file left behind: connection refused.
    drop(receiver);
    sink.emit(event(&factory, 2));
    // Listener file removed as well.
    std::fs::remove_file(&path).expect("remove socket file");
    let started = Instant::now();
    sink.emit(event(&factory, 3));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(sink.stats().dropped_no_listener, 3);
    assert_eq!(sink.stats().sent, 1);

    // Recreated at the same path: the next event is delivered.
    let receiver = listener(&path);
    sink.emit(event(&factory, 4));
    assert_eq!(receive(&receiver).data, event(&factory, 4).data);
    let stats = sink.stats();
    assert_eq!(stats.sent, 2);
    assert_eq!(stats.dropped_total(), 3);
}

#[test]
fn a_listener_that_appears_later_is_picked_up_within_the_reconnect_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let factory = EventFactory::new("test", "hosted");
    let interval = Duration::from_millis(50);
    let sink = DatagramSink::new(&path)
        .expect("sink")
        .with_reconnect_interval(interval);
    // Nothing listens: these are dropped.
    for n in 0..100 {
        sink.emit(event(&factory, n));
    }
    assert_eq!(sink.stats().dropped_no_listener, 100);

    let receiver = listener(&path);
    let started = Instant::now();
    receiver.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 100;
    let delivered = loop {
        sink.emit(event(&factory, n));
        if let Ok(len) = receiver.recv(&mut buf) {
            break Event::from_json(std::str::from_utf8(&buf[..len]).expect("utf-8"))
                .expect("an event");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never reconnected: {:?}",
            sink.stats()
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(delivered.data, event(&factory, n).data);
    let stats = sink.stats();
    assert_eq!(stats.sent, 1);
    assert_eq!(stats.dropped_no_listener, n);

    // Connected now: every following event is delivered.
    receiver.set_nonblocking(false).expect("blocking");
    for m in 0..10 {
        sink.emit(event(&factory, 1000 + m));
        assert_eq!(receive(&receiver).data, event(&factory, 1000 + m).data);
    }
    assert_eq!(sink.stats().sent, 11);
}

/// A reload moves the socket: the next event goes to the new listener.
#[test]
fn set_path_sends_the_next_event_to_the_new_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_path, new_path) = (dir.path().join("old.sock"), dir.path().join("new.sock"));
    let (old, new) = (listener(&old_path), listener(&new_path));
    let factory = EventFactory::new("test", "hosted");
    let sink = DatagramSink::new(&old_path).expect("sink");
    sink.emit(event(&factory, 1));
    assert_eq!(receive(&old).data, event(&factory, 1).data);

    assert!(sink.set_path(&new_path));
    assert!(!sink.set_path(&new_path), "same path: no change");
    assert_eq!(sink.path(), new_path);
    sink.emit(event(&factory, 2));
    assert_eq!(receive(&new).data, event(&factory, 2).data);
    old.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1024];
    assert!(old.recv(&mut buf).is_err(), "nothing more at the old path");
    assert_eq!(sink.stats().sent, 2);
}

#[test]
fn full_listener_drops_without_blocking_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let receiver = listener(&path);
    let sink = DatagramSink::new(&path).expect("sink");
    let factory = EventFactory::new("test", "hosted");

    // Never read: the queue fills and the sink must drop, not wait.
    let mut slowest = Duration::ZERO;
    let mut emitted = 0u64;
    while sink.stats().dropped_full < 100 {
        assert!(
            emitted < 1_000_000,
            "queue never filled: {:?}",
            sink.stats()
        );
        let started = Instant::now();
        sink.emit(event(&factory, emitted));
        slowest = slowest.max(started.elapsed());
        emitted += 1;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "an emit took {slowest:?}"
    );
    let stats = sink.stats();
    assert!(stats.sent > 0);
    assert_eq!(stats.sent + stats.dropped_full, emitted);
    assert_eq!(stats.dropped_no_listener + stats.dropped_other, 0);

    // Drain what was queued, then delivery resumes.
    receiver.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0u8; 128 * 1024];
    let mut drained = 0u64;
    while receiver.recv(&mut buf).is_ok() {
        drained += 1;
    }
    assert_eq!(drained, stats.sent);
    receiver.set_nonblocking(false).expect("blocking");
    let last = event(&factory, u64::MAX);
    sink.emit(last.clone());
    assert_eq!(receive(&receiver), last);
    assert_eq!(sink.stats().sent, stats.sent + 1);
}

#[test]
fn oversized_event_is_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let _receiver = listener(&path);
    let sink = DatagramSink::new(&path)
        .expect("sink")
        .with_max_datagram_bytes(100);
    sink.emit(event(&EventFactory::new("test", "hosted"), 1));
    assert_eq!(
        sink.stats(),
        SinkStats {
            dropped_other: 1,
            ..SinkStats::default()
        }
    );
}

#[test]
fn fanout_and_memory_sinks() {
    let first = Arc::new(MemorySink::new(3));
    let second = Arc::new(MemorySink::new(10));
    let fanout = FanoutSink::new(vec![first.clone(), second.clone(), Arc::new(NullSink)]);
    let factory = EventFactory::new("test", "hosted");
    let events: Vec<Event> = (0..5).map(|n| event(&factory, n)).collect();
    for e in &events {
        fanout.emit(e.clone());
    }
    assert_eq!(second.events(), events);
    assert_eq!(
        first.events(),
        events[2..].to_vec(),
        "ring keeps the newest"
    );
    assert_eq!(first.evicted(), 2);
    assert_eq!(first.take().len(), 3);
    assert!(first.is_empty());
}

#[test]
fn concurrent_emitters_share_one_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let receiver = listener(&path);
    let sink = Arc::new(DatagramSink::new(&path).expect("sink"));
    let factory = EventFactory::new("test", "hosted");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sink = Arc::clone(&sink);
            let factory = factory.clone();
            std::thread::spawn(move || {
                for n in 0..25 {
                    sink.emit(event(&factory, t * 100 + n));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("emitter thread");
    }
    let stats = sink.stats();
    assert_eq!(stats.sent + stats.dropped_full, 100);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..stats.sent {
        assert!(ids.insert(receive(&receiver).id));
    }
}

#[test]
fn a_serialized_event_is_sent_as_given_through_a_fanout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    let receiver = listener(&path);
    let datagrams = Arc::new(DatagramSink::new(&path).expect("sink"));
    let memory = Arc::new(MemorySink::new(4));
    let fanout = FanoutSink::new(vec![memory.clone(), datagrams.clone()]);
    let factory = EventFactory::new("test", "hosted");
    let sent = event(&factory, 7);
    // The pool serializes once for its journal and hands the same text on:
    // the datagram carries exactly that text, not a second serialization.
    let json = sent.to_json();
    fanout.emit_serialized(sent.clone(), &json);
    let mut buf = vec![0u8; 128 * 1024];
    let len = receiver.recv(&mut buf).expect("datagram within 5 s");
    assert_eq!(std::str::from_utf8(&buf[..len]).expect("utf-8"), json);
    assert_eq!(memory.events(), vec![sent]);
    assert_eq!(datagrams.stats().sent, 1);
}
