//! The Stratum V1 miner of the load tool: subscribe, authorize, then
//! shares in lines built without a JSON serializer and answers read
//! without a parser where their shape allows.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pacer::Slot;
use crate::stats::{micros, note_notify, LocalStats, Shared};
use crate::{address_of, share_falls_due, LoadConfig, ShareMode, XorShift64};

/// Largest line the tool accepts from the pool.
const MAX_LINE: usize = 1 << 20;
/// The current job, decoded only when a share is about to be made (a
/// burst of notifies costs the tool little more than reading them).
struct Job {
    miner_job: tbg_miner::MinerJob,
    /// `,"method":"mining.submit","params":["USER","JOB","` for this job.
    submit_middle: Vec<u8>,
    /// The same with a job id the pool never issued (invalid shares).
    invalid_middle: Vec<u8>,
}

impl Job {
    fn decode(line: &[u8], username: &str) -> Option<Job> {
        let message: Value = serde_json::from_slice(line).ok()?;
        let params = message.get("params")?;
        let miner_job = tbg_miner::MinerJob::from_notify_params(params).ok()?;
        let middle = |job_id: &str| {
            let mut middle = b",\"method\":\"mining.submit\",\"params\":[".to_vec();
            middle.extend_from_slice(Value::from(username).to_string().as_bytes());
            middle.push(b',');
            middle.extend_from_slice(Value::from(job_id).to_string().as_bytes());
            middle.extend_from_slice(b",\"");
            middle
        };
        Some(Job {
            submit_middle: middle(&miner_job.job_id),
            invalid_middle: middle("ffffffffffffffff"),
            miner_job,
        })
    }
}

/// What a line from the pool is, found without a JSON parser where it can be.
enum Incoming<'a> {
    /// `{"id":N,"result":...}` for a submit: Ok = accepted, Err = reason.
    ShareAnswer(u64, Result<(), &'a str>),
    Notify {
        prevhash: &'a [u8],
        clean_jobs: bool,
    },
    /// Anything else: parsed with serde_json.
    Other,
}

fn classify(line: &[u8]) -> Incoming<'_> {
    const NOTIFY: &[u8] = b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"";
    if let Some(rest) = line.strip_prefix(NOTIFY) {
        let Some(end_id) = rest.iter().position(|b| *b == b'"') else {
            return Incoming::Other;
        };
        let Some(rest) = rest[end_id..].strip_prefix(b"\",\"") else {
            return Incoming::Other;
        };
        let Some(end) = rest.iter().position(|b| *b == b'"') else {
            return Incoming::Other;
        };
        return Incoming::Notify {
            prevhash: &rest[..end],
            clean_jobs: line.trim_ascii_end().ends_with(b"true]}"),
        };
    }
    let Some(rest) = line.strip_prefix(b"{\"id\":") else {
        return Incoming::Other;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return Incoming::Other;
    }
    let id = rest[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let Some(rest) = rest[digits..].strip_prefix(b",\"result\":") else {
        return Incoming::Other;
    };
    if rest.starts_with(b"true") {
        return Incoming::ShareAnswer(id, Ok(()));
    }
    // `"error":[CODE,"MESSAGE",...]`
    let Some(at) = find(rest, b"\"error\":[") else {
        return Incoming::Other;
    };
    let error = &rest[at + 9..];
    let Some(start) = find(error, b",\"") else {
        return Incoming::Other;
    };
    let message = &error[start + 2..];
    let Some(end) = message.iter().position(|b| *b == b'"' || *b == b'\\') else {
        return Incoming::Other;
    };
    if message[end] == b'\\' {
        return Incoming::Other;
    }
    match std::str::from_utf8(&message[..end]) {
        Ok(reason) => Incoming::ShareAnswer(id, Err(reason)),
        Err(_) => Incoming::Other,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Appends `{"id":ID` + the job's middle + `EN2","NTIME","NONCE"]}\n`.
fn push_submit(
    out: &mut Vec<u8>,
    id: u64,
    middle: &[u8],
    extranonce2: &[u8],
    ntime: u32,
    nonce: u32,
) {
    use std::io::Write as _;
    out.extend_from_slice(b"{\"id\":");
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{id}");
    out.extend_from_slice(middle);
    push_hex(out, extranonce2);
    out.extend_from_slice(b"\",\"");
    push_hex(out, &ntime.to_be_bytes());
    out.extend_from_slice(b"\",\"");
    push_hex(out, &nonce.to_be_bytes());
    out.extend_from_slice(b"\"]}\n");
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
}

/// The merkle root for these extranonces, through a reused coinbase buffer.
fn merkle_root(
    job: &tbg_miner::MinerJob,
    coinbase: &mut Vec<u8>,
    extranonce1: &[u8],
    extranonce2: &[u8],
) -> [u8; 32] {
    coinbase.clear();
    coinbase.extend_from_slice(&job.coinb1);
    coinbase.extend_from_slice(extranonce1);
    coinbase.extend_from_slice(extranonce2);
    coinbase.extend_from_slice(&job.coinb2);
    let mut root = tbg_miner::sha256d(coinbase);
    let mut pair = [0u8; 64];
    for step in &job.merkle_branch {
        pair[..32].copy_from_slice(&root);
        pair[32..].copy_from_slice(step);
        root = tbg_miner::sha256d(&pair);
    }
    root
}

pub(crate) async fn session(
    index: usize,
    config: &LoadConfig,
    shared: &Shared,
    stream: tokio::net::TcpStream,
    deadline: Instant,
    pace: Option<&Slot>,
) -> Result<(), &'static str> {
    let (mut read, mut write) = stream.into_split();
    let username = format!("{}.m{index}", address_of(config, index));
    let started = Instant::now();
    let send = |id: u64, method: &str, params: Value| {
        let mut text = json!({"id": id, "method": method, "params": params}).to_string();
        text.push('\n');
        text
    };
    let mut hello = send(1, "mining.subscribe", json!(["tbg-loadtest/0.1"]));
    hello.push_str(&send(2, "mining.authorize", json!([username, "x"])));
    if let Some(diff) = config.suggest_difficulty {
        hello.push_str(&send(3, "mining.suggest_difficulty", json!([diff])));
    }
    write
        .write_all(hello.as_bytes())
        .await
        .map_err(|_| "write")?;

    let window = config.window.max(1);
    let mut extranonce1 = Vec::new();
    let mut extranonce2_size = 4usize;
    let mut difficulty = 1.0f64;
    let mut job: Option<Job> = None;
    // The last notify, not yet decoded.
    let mut pending_notify: Vec<u8> = Vec::new();
    let mut have_notify = false;
    let mut authorized = false;
    let mut next_id = 10u64;
    // Submits awaiting an answer, oldest first (the pool answers in order).
    let mut in_flight: std::collections::VecDeque<(u64, Instant)> =
        std::collections::VecDeque::with_capacity(window);
    let mut counter = 0u64;
    // An odd multiplier keeps the seed non-zero.
    let mut random = XorShift64((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut next_random = move || random.next();
    let mut stats = LocalStats::new();
    let mut read_buf = vec![0u8; 4096];
    let mut filled = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(256 * window.min(64));
    let mut coinbase = Vec::with_capacity(256);
    let mut told_to_reconnect = false;

    let result = loop {
        let now = Instant::now();
        if now >= deadline {
            break Ok(());
        }
        let ready = authorized && (job.is_some() || have_notify) && !extranonce1.is_empty();
        let due = in_flight.len() < window && pace.is_none_or(Slot::owed);
        // The job is decoded only when a share is due: a burst of notifies
        // costs the tool little more than reading them.
        if ready && due && have_notify {
            job = Job::decode(&pending_notify, &username).or(job);
            have_notify = false;
        }
        // Fill the window with every share that is due, in one write.
        if ready && due {
            while in_flight.len() < window {
                let Some(current) = &job else { break };
                if pace.is_some_and(|slot| !slot.take()) {
                    break;
                }
                counter += 1;
                let mut extranonce2 = [0u8; 16];
                extranonce2[..8].copy_from_slice(&counter.to_le_bytes());
                let extranonce2 = &extranonce2[..extranonce2_size];
                let invalid = config.invalid_fraction > 0.0
                    && (next_random() % 10_000) as f64 / 10_000.0 < config.invalid_fraction;
                let miner_job = &current.miner_job;
                let ntime = miner_job.ntime;
                let nonce = match (invalid, config.share_mode) {
                    (true, _) => 0u32,
                    (false, ShareMode::Real) => miner_job
                        .find_nonce(
                            &extranonce1,
                            extranonce2,
                            ntime,
                            miner_job.version,
                            difficulty,
                            0,
                        )
                        .map_or(0, |(nonce, _)| nonce),
                    (false, ShareMode::Random) => {
                        // A random nonce that is not a block: on regtest half of all
                        // hashes meet the network target, and a load test must not
                        // turn into a block storm.
                        let root = merkle_root(miner_job, &mut coinbase, &extranonce1, extranonce2);
                        let mut nonce = next_random() as u32;
                        for _ in 0..64 {
                            let header = miner_job.header(&root, ntime, nonce, miner_job.version);
                            if !tbg_miner::meets_nbits(
                                &tbg_miner::sha256d(&header),
                                miner_job.nbits,
                            ) {
                                break;
                            }
                            nonce = next_random() as u32;
                        }
                        nonce
                    }
                };
                let middle = if invalid {
                    &current.invalid_middle
                } else {
                    &current.submit_middle
                };
                let id = next_id;
                next_id += 1;
                push_submit(&mut out, id, middle, extranonce2, ntime, nonce);
                in_flight.push_back((id, now));
                stats.sent += 1;
            }
            if !out.is_empty() {
                if write.write_all(&out).await.is_err() {
                    break Err("write");
                }
                out.clear();
            }
        }
        let wait_for_pacer = ready && in_flight.len() < window;
        if filled == read_buf.len() {
            if read_buf.len() >= MAX_LINE {
                break Err("line_too_long");
            }
            read_buf.resize(read_buf.len() * 2, 0);
        }
        let read_result = tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), read.read(&mut read_buf[filled..])) => read,
            _ = share_falls_due(pace), if wait_for_pacer => continue,
        };
        let Ok(read_result) = read_result else {
            break Ok(());
        };
        match read_result {
            Ok(0) => break Err("closed_by_pool"),
            Err(_) => break Err("read"),
            Ok(n) => filled += n,
        }
        let received = Instant::now();
        let mut consumed = 0usize;
        while let Some(pos) = read_buf[consumed..filled].iter().position(|b| *b == b'\n') {
            let line = &read_buf[consumed..consumed + pos];
            consumed += pos + 1;
            match classify(line) {
                Incoming::ShareAnswer(id, verdict) if id >= 10 => {
                    let sent_at = match in_flight.front() {
                        Some((front, sent_at)) if *front == id => {
                            let sent_at = *sent_at;
                            in_flight.pop_front();
                            Some(sent_at)
                        }
                        _ => in_flight
                            .iter()
                            .position(|(sent, _)| *sent == id)
                            .and_then(|at| in_flight.remove(at))
                            .map(|(_, sent_at)| sent_at),
                    };
                    if let Some(sent_at) = sent_at {
                        stats
                            .answered(micros(received.saturating_duration_since(sent_at)), verdict);
                    }
                }
                Incoming::Notify {
                    prevhash,
                    clean_jobs,
                } => {
                    // A miner's first job tells nothing about block propagation.
                    if (job.is_some() || have_notify) && clean_jobs {
                        note_notify(shared, prevhash, received);
                    }
                    pending_notify.clear();
                    pending_notify.extend_from_slice(line);
                    have_notify = true;
                }
                Incoming::ShareAnswer(..) | Incoming::Other => {
                    let message: Value = match serde_json::from_slice(line) {
                        Ok(message) => message,
                        Err(_) => return Err("bad_json"),
                    };
                    match message.get("method").and_then(Value::as_str) {
                        Some("mining.notify") => {
                            let params = message.get("params").cloned().unwrap_or(Value::Null);
                            if (job.is_some() || have_notify)
                                && params.get(8).and_then(Value::as_bool) == Some(true)
                            {
                                let prevhash = params.get(1).and_then(Value::as_str).unwrap_or("");
                                note_notify(shared, prevhash.as_bytes(), received);
                            }
                            pending_notify.clear();
                            pending_notify.extend_from_slice(line);
                            have_notify = true;
                        }
                        Some("mining.set_difficulty") => {
                            difficulty = message
                                .pointer("/params/0")
                                .and_then(Value::as_f64)
                                .unwrap_or(difficulty);
                        }
                        Some("client.reconnect") => told_to_reconnect = true,
                        Some(_) => {}
                        None => {
                            let id = message.get("id").and_then(Value::as_u64).unwrap_or(0);
                            match id {
                                1 => {
                                    let result =
                                        message.get("result").cloned().unwrap_or(Value::Null);
                                    extranonce1 = result
                                        .get(1)
                                        .and_then(Value::as_str)
                                        .and_then(|h| hex::decode(h).ok())
                                        .unwrap_or_default();
                                    extranonce2_size = result
                                        .get(2)
                                        .and_then(Value::as_u64)
                                        .unwrap_or(4)
                                        .clamp(1, 16)
                                        as usize;
                                }
                                2 => {
                                    if message.get("result") != Some(&Value::Bool(true)) {
                                        return Err("authorize_refused");
                                    }
                                    authorized = true;
                                    shared.authorize.lock().push(micros(started.elapsed()));
                                }
                                _ => {
                                    if let Some(at) =
                                        in_flight.iter().position(|(sent, _)| *sent == id)
                                    {
                                        if let Some((_, sent_at)) = in_flight.remove(at) {
                                            let verdict = if message.get("result")
                                                == Some(&Value::Bool(true))
                                            {
                                                Ok(())
                                            } else {
                                                Err(reject_reason(&message))
                                            };
                                            stats.answered(
                                                micros(received.saturating_duration_since(sent_at)),
                                                verdict
                                                    .as_ref()
                                                    .map(|_| ())
                                                    .map_err(String::as_str),
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if consumed > 0 {
            read_buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
        stats.maybe_flush(shared, received);
        if told_to_reconnect {
            // What a miner does; this tool reports it rather than reconnecting.
            shared.reconnect_requests.fetch_add(1, Ordering::Relaxed);
            break Ok(());
        }
    };
    stats.flush(shared, Instant::now());
    result
}

fn reject_reason(message: &Value) -> String {
    match message.get("error") {
        Some(Value::Array(parts)) => parts
            .get(1)
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        Some(Value::Object(map)) => map
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        _ => "rejected".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_answers_are_read_without_a_parser() {
        let accepted = tbg_stratum_like_ok(42);
        assert!(matches!(
            classify(accepted.as_bytes()),
            Incoming::ShareAnswer(42, Ok(()))
        ));
        let rejected = br#"{"id":43,"result":false,"error":[23,"Above target",null],"reject-reason":"Above target"}"#;
        match classify(rejected) {
            Incoming::ShareAnswer(43, Err(reason)) => assert_eq!(reason, "Above target"),
            _ => panic!("not read as a rejected share"),
        }
        // Escapes and object-style errors go to the JSON parser.
        assert!(matches!(
            classify(br#"{"id":44,"result":null,"error":[20,"a \"quoted\" reason",null]}"#),
            Incoming::Other
        ));
        assert!(matches!(
            classify(br#"{"id":45,"result":null,"error":{"code":20,"message":"x"}}"#),
            Incoming::Other
        ));
        assert!(matches!(
            classify(br#"{"result":true,"id":46}"#),
            Incoming::Other
        ));
    }

    fn tbg_stratum_like_ok(id: u64) -> String {
        format!(r#"{{"id":{id},"result":true,"error":null}}"#)
    }

    #[test]
    fn notify_prevhash_and_clean_flag() {
        let line = br#"{"id":null,"method":"mining.notify","params":["00ab","deadbeef","01","02",[],"20000000","207fffff","65000000",true]}"#;
        match classify(line) {
            Incoming::Notify {
                prevhash,
                clean_jobs,
            } => {
                assert_eq!(prevhash, b"deadbeef");
                assert!(clean_jobs);
            }
            _ => panic!("not read as a notify"),
        }
        let not_clean = br#"{"id":null,"method":"mining.notify","params":["00ab","deadbeef","01","02",[],"20000000","207fffff","65000000",false]}"#;
        assert!(matches!(
            classify(not_clean),
            Incoming::Notify {
                clean_jobs: false,
                ..
            }
        ));
    }

    #[test]
    fn submit_line_is_valid_json_with_the_fields_in_order() {
        let job_middle = {
            let mut middle = b",\"method\":\"mining.submit\",\"params\":[".to_vec();
            middle.extend_from_slice(br#""addr.m1","0000000000000abc",""#);
            middle
        };
        let mut out = Vec::new();
        push_submit(
            &mut out,
            17,
            &job_middle,
            &[1, 2, 3, 0xff],
            0x6500_0000,
            0xdead_beef,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let parsed: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            parsed,
            json!({"id": 17, "method": "mining.submit",
                   "params": ["addr.m1", "0000000000000abc", "010203ff", "65000000", "deadbeef"]})
        );
    }
}
