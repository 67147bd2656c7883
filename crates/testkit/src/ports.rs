//! Ports for servers a test starts in another process.
//!
//! Binding port 0 and closing the socket again (the usual trick) races every
//! other test process on the machine: the kernel hands the same ephemeral
//! port to the next process that asks, and outgoing connections take ports
//! from that range too. A CI run once saw a Redis server of another test
//! answer on the port its pool was about to bind. So ports come from below
//! the ephemeral range, and each is claimed with a lock file that the test
//! process holds until it exits (the kernel drops the lock with the
//! process, so a crashed test leaves no stale claim).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::sync::Mutex;

use bitcoin::secp256k1::rand::{self, Rng};

/// Below Linux's default ephemeral range (32768-60999), above the ports
/// well-known services use.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The claims this process holds: dropped (unlocked) when it exits.
static CLAIMS: Mutex<Vec<File>> = Mutex::new(Vec::new());

fn claim_dir() -> PathBuf {
    std::env::temp_dir().join("tbg-test-ports")
}

/// A port no other test process has claimed and nothing listens on now.
pub fn free_port() -> u16 {
    let dir = claim_dir();
    std::fs::create_dir_all(&dir).expect("the port claim directory");
    let mut rng = rand::thread_rng();
    for _ in 0..1_000 {
        let port = rng.gen_range(PORTS);
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(error)) => panic!("locking a port claim: {error}"),
        }
        // Claimed, but a process outside the tests may still hold it.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        return port;
    }
    panic!("no free port in {PORTS:?} after 1000 tries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_port_is_never_handed_out_twice() {
        let ports: std::collections::HashSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
        // Another process (here: another open file description) cannot
        // take a claimed port.
        let port = *ports.iter().next().unwrap();
        let other = File::options()
            .write(true)
            .open(claim_dir().join(port.to_string()))
            .unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }

    #[test]
    fn a_port_something_listens_on_is_skipped() {
        let listeners: Vec<_> = PORTS
            .step_by(97)
            .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
            .collect();
        let busy: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        for _ in 0..100 {
            assert!(!busy.contains(&free_port()));
        }
    }
}
