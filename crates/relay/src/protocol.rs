//! Frames, handshake and sealing of the relay link.
//!
//! Handshake (every line is one JSON object):
//! 1. primary -> relay: `{"type":"challenge","nonce":P}`
//! 2. relay -> primary: `{"type":"hello","region":R,"instance_id":I,"nonce":N,"mac":M1}`,
//!    M1 = HMAC(secret, "tbg-relay hello" | P | N | R | I)
//! 3. primary -> relay: `{"type":"welcome","region":R',"mac":M2}`,
//!    M2 = HMAC(secret, "tbg-relay welcome" | N | P | R')
//!
//! Both sides then hold K = HMAC(secret, "tbg-relay session" | P | N) and
//! seal every frame as `{"seq":n,"body":{...},"mac":HMAC(K, dir | n | body)}`,
//! `dir` naming the sender's role and `n` counting from 1 in each
//! direction. Nonces are fresh per connection, so a recorded session
//! cannot be played back on another.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of each side's nonce.
pub const NONCE_BYTES: usize = 16;

/// Longest frame accepted: a mainnet template with a full block of
/// transactions is ~4 MB of hex.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("frame of {0} bytes, more than the link's {MAX_FRAME_BYTES}")]
    TooLong(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("expected a {expected} frame, got {got:?}")]
    Unexpected { expected: &'static str, got: String },
    #[error("authentication failed: the other side does not hold the link's secret (or the frame was altered)")]
    BadMac,
    #[error("frame {got} where {expected} was due: replayed, reordered or lost")]
    Sequence { expected: u64, got: u64 },
    #[error("the primary refused this relay: {0}")]
    Refused(String),
}

/// A frame's content once the link is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// primary -> relay: a template (Bitcoin Core's getblocktemplate
    /// result), sent at once on each new one.
    Template { generation: u64, template: Value },
    /// Both ways, every `heartbeat_s`: alive, at this tip.
    Heartbeat {
        height: u64,
        tip: String,
        sent_ms: u64,
    },
    /// relay -> primary: a block a relay miner found, for the primary's
    /// nodes (the relay submits it to its own node as well).
    Block {
        hash: String,
        height: u64,
        hex: String,
        user: String,
        worker: String,
        #[serde(default)]
        reward_sats: u64,
    },
    /// primary -> relay: the block is in the primary's block store.
    BlockStored { hash: String },
    /// primary -> relay: the block does not check out (not a block, a hash
    /// that is not its own, no proof of work); not sent again.
    BlockRefused { hash: String, reason: String },
}

/// Which side a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Relay,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Primary => b"primary",
            Role::Relay => b"relay",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Primary => Role::Relay,
            Role::Relay => Role::Primary,
        }
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        // Length-prefixed, so that no two part lists give the same input.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn verify(mac: HmacSha256, hex_tag: &str) -> Result<(), LinkError> {
    let tag = hex::decode(hex_tag).map_err(|_| LinkError::BadMac)?;
    mac.verify_slice(&tag).map_err(|_| LinkError::BadMac)
}

fn tag(mac: HmacSha256) -> String {
    hex::encode(mac.finalize().into_bytes())
}

fn parse(line: &str) -> Result<Value, LinkError> {
    if line.len() > MAX_FRAME_BYTES {
        return Err(LinkError::TooLong(line.len()));
    }
    serde_json::from_str(line.trim_end()).map_err(|e| LinkError::Malformed(e.to_string()))
}

fn field<'a>(frame: &'a Value, name: &str) -> Result<&'a str, LinkError> {
    frame
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| LinkError::Malformed(format!("no string field {name:?}")))
}

fn expect_type(frame: &Value, expected: &'static str) -> Result<(), LinkError> {
    match frame.get("type").and_then(Value::as_str) {
        Some(got) if got == expected => Ok(()),
        got => Err(LinkError::Unexpected {
            expected,
            got: got.unwrap_or("<none>").chars().take(40).collect(),
        }),
    }
}

fn nonce_field(frame: &Value) -> Result<[u8; NONCE_BYTES], LinkError> {
    let text = field(frame, "nonce")?;
    let bytes = hex::decode(text).map_err(|_| LinkError::Malformed("nonce is not hex".into()))?;
    bytes
        .try_into()
        .map_err(|_| LinkError::Malformed(format!("nonce is not {NONCE_BYTES} bytes")))
}

fn session_key(secret: &[u8], primary: &[u8; NONCE_BYTES], relay: &[u8; NONCE_BYTES]) -> Vec<u8> {
    mac(secret, &[b"tbg-relay session", primary, relay])
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Who a relay says it is, once its hello was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub region: String,
    pub instance_id: u8,
}

/// The primary's side of a handshake.
pub struct PrimaryHandshake {
    secret: Vec<u8>,
    nonce: [u8; NONCE_BYTES],
    region: String,
}

impl PrimaryHandshake {
    /// A handshake with a fresh random `nonce`; send [`Self::challenge`] first.
    pub fn new(secret: &[u8], region: &str, nonce: [u8; NONCE_BYTES]) -> PrimaryHandshake {
        PrimaryHandshake {
            secret: secret.to_vec(),
            nonce,
            region: region.to_owned(),
        }
    }

    pub fn challenge(&self) -> String {
        serde_json::json!({"type": "challenge", "nonce": hex::encode(self.nonce)}).to_string()
    }

    /// The line that refuses an authenticated relay (an instance id already
    /// in use), sent instead of the welcome.
    pub fn refusal(reason: &str) -> String {
        serde_json::json!({"type": "refused", "reason": reason}).to_string()
    }

    /// The relay's hello: checked, answered with the welcome line.
    pub fn accept(self, line: &str) -> Result<(String, Hello, LinkSession), LinkError> {
        let frame = parse(line)?;
        expect_type(&frame, "hello")?;
        let relay_nonce = nonce_field(&frame)?;
        let region = field(&frame, "region")?.to_owned();
        let instance_id = frame
            .get("instance_id")
            .and_then(Value::as_u64)
            .and_then(|id| u8::try_from(id).ok())
            .ok_or_else(|| LinkError::Malformed("instance_id is not 0..=255".into()))?;
        verify(
            mac(
                &self.secret,
                &[
                    b"tbg-relay hello",
                    &self.nonce,
                    &relay_nonce,
                    region.as_bytes(),
                    &[instance_id],
                ],
            ),
            field(&frame, "mac")?,
        )?;
        let welcome = tag(mac(
            &self.secret,
            &[
                b"tbg-relay welcome",
                &relay_nonce,
                &self.nonce,
                self.region.as_bytes(),
            ],
        ));
        let line = serde_json::json!({"type": "welcome", "region": self.region, "mac": welcome})
            .to_string();
        let key = session_key(&self.secret, &self.nonce, &relay_nonce);
        Ok((
            line,
            Hello {
                region,
                instance_id,
            },
            LinkSession::new(Role::Primary, key),
        ))
    }
}

/// The relay's side of a handshake.
pub struct RelayHandshake {
    secret: Vec<u8>,
    nonce: [u8; NONCE_BYTES],
    region: String,
    instance_id: u8,
    primary_nonce: Option<[u8; NONCE_BYTES]>,
}

impl RelayHandshake {
    pub fn new(
        secret: &[u8],
        region: &str,
        instance_id: u8,
        nonce: [u8; NONCE_BYTES],
    ) -> RelayHandshake {
        RelayHandshake {
            secret: secret.to_vec(),
            nonce,
            region: region.to_owned(),
            instance_id,
            primary_nonce: None,
        }
    }

    /// The primary's challenge: answered with the hello line.
    pub fn on_challenge(&mut self, line: &str) -> Result<String, LinkError> {
        let frame = parse(line)?;
        expect_type(&frame, "challenge")?;
        let primary_nonce = nonce_field(&frame)?;
        self.primary_nonce = Some(primary_nonce);
        let hello = tag(mac(
            &self.secret,
            &[
                b"tbg-relay hello",
                &primary_nonce,
                &self.nonce,
                self.region.as_bytes(),
                &[self.instance_id],
            ],
        ));
        Ok(serde_json::json!({
            "type": "hello",
            "region": self.region,
            "instance_id": self.instance_id,
            "nonce": hex::encode(self.nonce),
            "mac": hello,
        })
        .to_string())
    }

    /// The primary's welcome: the primary proved it holds the secret too.
    /// Returns the primary's region and the session.
    pub fn on_welcome(self, line: &str) -> Result<(String, LinkSession), LinkError> {
        let Some(primary_nonce) = self.primary_nonce else {
            return Err(LinkError::Unexpected {
                expected: "challenge",
                got: "welcome".into(),
            });
        };
        let frame = parse(line)?;
        if frame.get("type").and_then(Value::as_str) == Some("refused") {
            let reason = frame.get("reason").and_then(Value::as_str).unwrap_or("");
            return Err(LinkError::Refused(reason.chars().take(200).collect()));
        }
        expect_type(&frame, "welcome")?;
        let region = field(&frame, "region")?.to_owned();
        verify(
            mac(
                &self.secret,
                &[
                    b"tbg-relay welcome",
                    &self.nonce,
                    &primary_nonce,
                    region.as_bytes(),
                ],
            ),
            field(&frame, "mac")?,
        )?;
        let key = session_key(&self.secret, &primary_nonce, &self.nonce);
        Ok((region, LinkSession::new(Role::Relay, key)))
    }
}

/// An authenticated link: seals what this side sends, opens what the
/// other side sent.
pub struct LinkSession {
    role: Role,
    key: Vec<u8>,
    sent: u64,
    received: u64,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    seq: u64,
    body: Value,
    mac: String,
}

impl LinkSession {
    fn new(role: Role, key: Vec<u8>) -> LinkSession {
        LinkSession {
            role,
            key,
            sent: 0,
            received: 0,
        }
    }

    fn frame_mac(&self, sender: Role, seq: u64, body: &str) -> HmacSha256 {
        mac(
            &self.key,
            &[sender.label(), &seq.to_be_bytes(), body.as_bytes()],
        )
    }

    /// One line (no newline) carrying `body`.
    pub fn seal(&mut self, body: &Body) -> String {
        self.sent += 1;
        let body = serde_json::to_value(body).expect("a Body serializes");
        let text = body.to_string();
        let tag = tag(self.frame_mac(self.role, self.sent, &text));
        // The MAC covers the body's text as sent; the receiver recomputes it
        // from the same text (`serde_json` writes a Value one way).
        format!(r#"{{"seq":{},"body":{text},"mac":"{tag}"}}"#, self.sent)
    }

    /// The body of a line the other side sealed: authenticated, and the
    /// next in order.
    pub fn open(&mut self, line: &str) -> Result<Body, LinkError> {
        let frame = parse(line)?;
        let sealed: Sealed =
            serde_json::from_value(frame).map_err(|e| LinkError::Malformed(e.to_string()))?;
        let text = sealed.body.to_string();
        verify(
            self.frame_mac(self.role.other(), sealed.seq, &text),
            &sealed.mac,
        )?;
        let expected = self.received + 1;
        if sealed.seq != expected {
            return Err(LinkError::Sequence {
                expected,
                got: sealed.seq,
            });
        }
        self.received = expected;
        serde_json::from_value(sealed.body).map_err(|e| LinkError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret of the link";

    fn handshake(relay_secret: &[u8]) -> Result<(LinkSession, LinkSession), LinkError> {
        handshake_with(relay_secret, [1; NONCE_BYTES], [2; NONCE_BYTES])
    }

    /// Nonces are random per connection in use; fixed here.
    fn handshake_with(
        relay_secret: &[u8],
        primary_nonce: [u8; NONCE_BYTES],
        relay_nonce: [u8; NONCE_BYTES],
    ) -> Result<(LinkSession, LinkSession), LinkError> {
        let primary = PrimaryHandshake::new(SECRET, "eu", primary_nonce);
        let mut relay = RelayHandshake::new(relay_secret, "us", 7, relay_nonce);
        let hello = relay.on_challenge(&primary.challenge())?;
        let (welcome, who, primary_session) = primary.accept(&hello)?;
        assert_eq!(
            who,
            Hello {
                region: "us".into(),
                instance_id: 7
            }
        );
        let (region, relay_session) = relay.on_welcome(&welcome)?;
        assert_eq!(region, "eu");
        Ok((primary_session, relay_session))
    }

    fn heartbeat(height: u64) -> Body {
        Body::Heartbeat {
            height,
            tip: "00".repeat(32),
            sent_ms: 1,
        }
    }

    #[test]
    fn both_sides_authenticate_and_frames_pass_both_ways() {
        let (mut primary, mut relay) = handshake(SECRET).unwrap();
        let template = Body::Template {
            generation: 3,
            template: serde_json::json!({"height": 5, "transactions": [], "bits": "207fffff"}),
        };
        assert_eq!(relay.open(&primary.seal(&template)).unwrap(), template);
        assert_eq!(
            relay.open(&primary.seal(&heartbeat(5))).unwrap(),
            heartbeat(5)
        );
        let block = Body::Block {
            hash: "ab".repeat(32),
            height: 6,
            hex: "00".into(),
            user: "bcrt1q".into(),
            worker: "rig".into(),
            reward_sats: 5_000_000_000,
        };
        assert_eq!(primary.open(&relay.seal(&block)).unwrap(), block);
    }

    #[test]
    fn a_wrong_secret_fails_on_either_side() {
        assert_eq!(
            handshake(b"another secret of the link").err(),
            Some(LinkError::BadMac)
        );
        // A primary without the secret cannot pass itself off either.
        let impostor = PrimaryHandshake::new(b"guessed", "eu", [1; NONCE_BYTES]);
        let mut relay = RelayHandshake::new(SECRET, "us", 7, [2; NONCE_BYTES]);
        let hello = relay.on_challenge(&impostor.challenge()).unwrap();
        // The impostor cannot check the hello, and its welcome fails.
        let forged = serde_json::json!({"type": "welcome", "region": "eu", "mac": "00".repeat(32)});
        assert!(impostor.accept(&hello).is_err());
        assert_eq!(
            relay.on_welcome(&forged.to_string()).err(),
            Some(LinkError::BadMac)
        );
    }

    #[test]
    fn altered_replayed_reordered_and_reflected_frames_are_refused() {
        let (mut primary, mut relay) = handshake(SECRET).unwrap();
        let first = primary.seal(&heartbeat(1));
        let second = primary.seal(&heartbeat(2));
        // Altered: the height changed in transit.
        let altered = first.replace(r#""height":1"#, r#""height":9"#);
        assert_eq!(relay.open(&altered), Err(LinkError::BadMac));
        // Reordered: the second before the first.
        assert_eq!(
            relay.open(&second),
            Err(LinkError::Sequence {
                expected: 1,
                got: 2
            })
        );
        assert_eq!(relay.open(&first).unwrap(), heartbeat(1));
        // Replayed.
        assert_eq!(
            relay.open(&first),
            Err(LinkError::Sequence {
                expected: 2,
                got: 1
            })
        );
        // Reflected: the primary's own frame sent back to it.
        let third = primary.seal(&heartbeat(3));
        assert_eq!(primary.open(&third), Err(LinkError::BadMac));
        // A frame of another session (other nonces) is refused.
        let (mut other_primary, _) =
            handshake_with(SECRET, [3; NONCE_BYTES], [4; NONCE_BYTES]).unwrap();
        let _ = other_primary.seal(&heartbeat(1));
        let foreign = other_primary.seal(&heartbeat(2));
        assert!(relay.open(&foreign).is_err());
    }

    #[test]
    fn garbage_gets_an_error_never_a_panic() {
        let (_, mut relay) = handshake(SECRET).unwrap();
        for line in [
            "",
            "not json",
            "{}",
            r#"{"seq":1}"#,
            r#"{"seq":-1,"body":{},"mac":"zz"}"#,
            r#"{"seq":1,"body":{"type":"nope"},"mac":"00"}"#,
            "[1,2,3]",
        ] {
            assert!(relay.open(line).is_err(), "{line:?}");
        }
        let huge = "x".repeat(MAX_FRAME_BYTES + 1);
        assert_eq!(
            relay.open(&huge),
            Err(LinkError::TooLong(MAX_FRAME_BYTES + 1))
        );
        let primary = PrimaryHandshake::new(SECRET, "eu", [1; NONCE_BYTES]);
        for line in [
            r#"{"type":"hello"}"#,
            r#"{"type":"hello","nonce":"00","region":"us","instance_id":1,"mac":"00"}"#,
            r#"{"type":"hello","nonce":"0101010101010101010101010101010101","region":"us","instance_id":300,"mac":"00"}"#,
            r#"{"type":"welcome"}"#,
        ] {
            assert!(
                PrimaryHandshake::new(SECRET, "eu", [1; NONCE_BYTES])
                    .accept(line)
                    .is_err(),
                "{line:?}"
            );
        }
        drop(primary);
        let relay = RelayHandshake::new(SECRET, "us", 1, [2; NONCE_BYTES]);
        assert!(matches!(
            relay.on_welcome(r#"{"type":"welcome","region":"eu","mac":"00"}"#),
            Err(LinkError::Unexpected { .. })
        ));
    }
}
