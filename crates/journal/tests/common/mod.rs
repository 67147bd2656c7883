//! Helpers shared by the journal's integration tests (journal.rs, stage.rs).

// Each test binary compiles this module and uses its own subset of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use tbg_events::{Event, EventData, EventFactory};
use tbg_journal::{JournalReader, JournalRecord};

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// An accepted share of worker `rig{number}`, made at `ts`.
pub fn share_at(number: u64, ts: f64) -> Event {
    EventFactory::new("eu", "hosted").make_at(
        EventData::ShareSubmitted {
            user: "bc1qexampleuser".into(),
            worker: format!("rig{number}"),
            client_id: number,
            diff: 1024.0,
            sdiff: 2048.5,
            accepted: true,
            reject_reason: None,
            ip: "127.0.0.1".into(),
        },
        ts,
    )
}

/// An accepted share of worker `rig{number}`, made now.
pub fn share(number: u64) -> Event {
    share_at(number, now())
}

/// Every row of the journal at `path`, through a reader.
pub fn read_all(path: &Path) -> Vec<JournalRecord> {
    let reader = JournalReader::open(path).expect("open reader");
    reader.read_after(0, usize::MAX).expect("read")
}

/// The seqs of every row of the journal at `path`.
pub fn stored_seqs(path: &Path) -> Vec<u64> {
    read_all(path).iter().map(|record| record.seq).collect()
}

/// Runs the ignored test `test_name` of this test binary in a child process
/// with `env` (how the kill -9 tests get a writer they can kill); its stdin
/// is piped, its stdout read line by line.
pub fn spawn_test_child(
    test_name: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", test_name, "--nocapture"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout).lines())
}

/// Reads the child's `{prefix}{seq}` lines until one reports at least
/// `at_least`, SIGKILLs it, and returns the highest seq it printed (lines
/// printed before it died count too).
pub fn kill_9_after_reported(
    mut child: Child,
    mut lines: Lines<BufReader<ChildStdout>>,
    prefix: &str,
    at_least: u64,
) -> u64 {
    let parse = |line: &str| {
        line.strip_prefix(prefix)
            .map(|seq| seq.trim().parse::<u64>().unwrap())
    };
    let mut reported = 0u64;
    while reported < at_least {
        let line = lines.next().expect("child ended early").unwrap();
        if let Some(seq) = parse(&line) {
            reported = seq;
        }
    }
    child.kill().unwrap(); // SIGKILL
    for line in lines.map_while(Result::ok) {
        if let Some(seq) = parse(&line) {
            reported = reported.max(seq);
        }
    }
    child.wait().unwrap();
    reported
}
