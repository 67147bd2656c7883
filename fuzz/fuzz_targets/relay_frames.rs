//! Lines a stranger (or a broken peer) sends on the relay link, fed to
//! both handshakes and to an established session (`tbg_relay`'s protocol,
//! free of I/O).
//!
//! Asserts, besides "never panics": a handshake line that is not the
//! genuine one from a holder of the secret is refused; a session accepts
//! a frame only if it is the genuine next frame (the one the primary
//! sealed, perhaps re-spaced or with its keys reordered, which changes no
//! authenticated byte) and never anything else; the primary accepts
//! nothing at all (it sealed frames, the relay none).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tbg_relay::{Body, PrimaryHandshake, RelayHandshake, NONCE_BYTES};

const SECRET: &[u8] = b"the relay link's secret, fuzzed";

fn heartbeat() -> Body {
    Body::Heartbeat {
        height: 7,
        tip: "ab".repeat(32),
        sent_ms: 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Fixed nonces: the session key, and so every genuine frame, is the
    // same at every run (the seeds hold the genuine hello and frame 1).
    let primary = PrimaryHandshake::new(SECRET, "us-east", [1; NONCE_BYTES]);
    let mut relay = RelayHandshake::new(SECRET, "eu-west", 2, [2; NONCE_BYTES]);
    let genuine_hello = relay
        .on_challenge(&primary.challenge())
        .expect("the genuine challenge");
    for line in text.split('\n') {
        // The primary's side, a fresh handshake per line.
        let fresh = PrimaryHandshake::new(SECRET, "us-east", [1; NONCE_BYTES]);
        if let Ok((_, hello, _)) = fresh.accept(line) {
            assert_eq!(
                (hello.region.as_str(), hello.instance_id),
                ("eu-west", 2),
                "a hello authenticated that is not the genuine relay's: {line}"
            );
        }
        // The relay's side.
        let mut other = RelayHandshake::new(SECRET, "eu-west", 2, [2; NONCE_BYTES]);
        let _ = other.on_challenge(line);
    }
    let (_, _, mut primary_session) = PrimaryHandshake::new(SECRET, "us-east", [1; NONCE_BYTES])
        .accept(&genuine_hello)
        .expect("the genuine hello");
    let welcome_primary = PrimaryHandshake::new(SECRET, "us-east", [1; NONCE_BYTES]);
    let (welcome, _, _) = welcome_primary.accept(&genuine_hello).expect("again");
    let (_, mut relay_session) = relay.on_welcome(&welcome).expect("the genuine welcome");
    let _first = primary_session.seal(&heartbeat());
    let mut accepted = 0;
    for line in text.split('\n') {
        if let Ok(body) = relay_session.open(line) {
            accepted += 1;
            assert_eq!(accepted, 1, "only frame 1 was ever sealed: {line}");
            assert_eq!(body, heartbeat(), "{line}");
        }
        // The primary sealed frame 1 itself: sent back to it, refused.
        assert!(primary_session.open(line).is_err(), "reflected: {line}");
    }
});
