//! The Noise NX handshake and encrypted frames over any tokio stream.
//!
//! The codec is the reference implementation's; what it leaves to its user
//! is done here: reading exactly the bytes each step needs, bounding a
//! frame's declared size before any of it is buffered, and turning its
//! errors (which implement neither `std::error::Error` nor, for Noise,
//! `Display`) into a [`TransportError`].
//!
//! The codec's own reads are not cancellation-safe (its decoder reserves
//! its read window before the bytes arrive); [`FrameReader`] buffers in
//! front of it so that its `next` is. Writes are not: every encrypted
//! frame advances the nonce, so a pending [`FrameWriter::flush`] is never
//! dropped while the connection goes on.

use std::time::Duration;

use stratum_core::codec_sv2::{
    Decrypted, Handshake, NoiseDecoder, NoiseEncoder, TransportDecryptState, TransportEncryptState,
    ENCRYPTED_SV2_FRAME_HEADER_SIZE, SV2_FRAME_PLAINTEXT_CHUNK_SIZE,
};
use stratum_core::framing_sv2::framing::MessageFrame;
use stratum_core::noise_sv2::{
    Initiator, Responder, AEAD_MAC_LEN, ELLSWIFT_ENCODING_SIZE,
    INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE,
};
use stratum_core::parsers_sv2::{AnyMessage, AnyMessageOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::AuthorityKey;

/// Largest frame payload the pool reads: its peers' biggest message is a
/// `SetupConnection` (four strings of at most 255 bytes).
pub const POOL_MAX_INBOUND_PAYLOAD: usize = 4 * 1024;
/// Largest frame payload a client reads: a job's coinbase parts are at
/// most 64 KiB each.
pub const CLIENT_MAX_INBOUND_PAYLOAD: usize = 256 * 1024;

/// Bytes a read may take beyond the frame being decoded: several small
/// frames (a miner's pipelined submits) in one read, for a buffer of
/// 512 bytes per connection.
const READ_AHEAD: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise handshake failed: {0}")]
    Handshake(String),
    #[error("undecryptable frame: {0}")]
    Decrypt(String),
    #[error("frame of {declared} bytes, more than the {max} allowed")]
    FrameTooLarge { declared: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("cannot encode a message: {0}")]
    Encode(String),
}

fn io_error(error: std::io::Error) -> TransportError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        TransportError::Closed
    } else {
        TransportError::Io(error)
    }
}

/// The pool's side of the handshake: reads the miner's ephemeral key,
/// answers with ours and a certificate signed by the authority key valid
/// for `cert_validity`. The caller bounds it in time.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &AuthorityKey,
    cert_validity: Duration,
) -> Result<(TransportEncryptState, TransportDecryptState), TransportError> {
    let responder =
        Responder::from_authority_kp(&key.public_bytes(), &key.secret_bytes(), cert_validity)
            .map_err(|e| TransportError::Handshake(format!("{e:?}")))?;
    let mut ephemeral = [0u8; ELLSWIFT_ENCODING_SIZE];
    stream.read_exact(&mut ephemeral).await.map_err(io_error)?;
    let (reply, transport) = Handshake::responder(responder)
        .step_1(ephemeral)
        .map_err(|e| TransportError::Handshake(e.to_string()))?;
    stream.write_all(reply.payload()).await?;
    stream.flush().await?;
    Ok(transport.split())
}

/// A client's side: checks the pool's certificate against its authority
/// public key (32 x-only bytes).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    authority_public_key: [u8; 32],
) -> Result<(TransportEncryptState, TransportDecryptState), TransportError> {
    let initiator = Initiator::from_raw_k(authority_public_key)
        .map_err(|e| TransportError::Handshake(format!("{e:?}")))?;
    let (hello, sent) = Handshake::initiator(initiator)
        .step_0()
        .map_err(|e| TransportError::Handshake(e.to_string()))?;
    stream.write_all(hello.payload()).await?;
    stream.flush().await?;
    let mut reply = [0u8; INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE];
    stream.read_exact(&mut reply).await.map_err(io_error)?;
    let transport = sent
        .step_2(reply)
        .map_err(|e| TransportError::Handshake(e.to_string()))?;
    Ok(transport.split())
}

/// Reads decrypted, parsed messages from one half of a stream.
///
/// [`FrameReader::next`] is cancellation-safe: bytes are read into a
/// buffer of its own and handed to the decoder only once it holds all the
/// decoder asked for, so a `select!` may drop a pending `next` and call it
/// again without losing or corrupting anything.
pub struct FrameReader<R> {
    io: R,
    decoder: NoiseDecoder,
    /// `None` once a decrypt failed: the codec consumed it, the
    /// connection is over.
    state: Option<TransportDecryptState>,
    max_payload: usize,
    /// Bytes read but not yet given to the decoder.
    buffer: Vec<u8>,
    /// Bytes of the current frame given to the decoder so far.
    frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, state: TransportDecryptState, max_payload: usize) -> FrameReader<R> {
        FrameReader {
            io,
            decoder: NoiseDecoder::new(),
            state: Some(state),
            max_payload,
            buffer: Vec::new(),
            frame_bytes: 0,
        }
    }

    /// The next message. An error ends the connection: the decrypt state
    /// does not survive one, and a frame past the size limit is refused
    /// from its header, before its payload is read.
    pub async fn next(&mut self) -> Result<AnyMessageOwned, TransportError> {
        // The encrypted size of the largest frame allowed: its header, the
        // payload and one MAC per (at most 64 KiB) chunk of it.
        let allowed = ENCRYPTED_SV2_FRAME_HEADER_SIZE
            + self.max_payload
            + AEAD_MAC_LEN
                * self
                    .max_payload
                    .div_ceil(SV2_FRAME_PLAINTEXT_CHUNK_SIZE)
                    .max(1);
        let mut frame = loop {
            let window = self.decoder.writable_len();
            if window > 0 {
                // The decoder asks for the header, then the payload its
                // header declares, a chunk at a time: refused before a
                // byte past the limit is read.
                if self.frame_bytes + window > allowed {
                    return Err(TransportError::FrameTooLarge {
                        declared: self.frame_bytes + window,
                        max: self.max_payload,
                    });
                }
                while self.buffer.len() < window {
                    // Room for what the decoder needs and some more: the
                    // frames a peer sent together come in one read.
                    self.buffer
                        .reserve(window.max(READ_AHEAD) - self.buffer.len());
                    // Cancellation-safe: what it read is in the buffer.
                    if self.io.read_buf(&mut self.buffer).await? == 0 {
                        return Err(TransportError::Closed);
                    }
                }
                // From here to the end of the pass nothing awaits.
                self.decoder
                    .writable()
                    .copy_from_slice(&self.buffer[..window]);
                self.buffer.drain(..window);
                self.frame_bytes += window;
            }
            let state = self.state.take().ok_or(TransportError::Closed)?;
            match self.decoder.next_transport_frame(state) {
                Ok(Decrypted::Frame(frame, state)) => {
                    self.state = Some(state);
                    self.frame_bytes = 0;
                    break frame;
                }
                Ok(Decrypted::Incomplete(_, state)) => self.state = Some(state),
                Err(error) => return Err(TransportError::Decrypt(error.to_string())),
            }
        };
        let header = frame.header();
        let message = AnyMessage::try_from((header, frame.payload()))
            .map_err(|e| TransportError::Malformed(format!("{e:?}")))?;
        Ok(message.into_owned())
    }
}

/// Encrypts messages into a buffer and writes them out together.
pub struct FrameWriter<W> {
    io: W,
    encoder: NoiseEncoder,
    state: TransportEncryptState,
    pending: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, state: TransportEncryptState) -> FrameWriter<W> {
        FrameWriter {
            io,
            encoder: NoiseEncoder::new(),
            state,
            pending: Vec::new(),
        }
    }

    /// Encrypts a message for the next [`FrameWriter::flush`]. Messages
    /// are encrypted in the order they are pushed, which is the order the
    /// peer decrypts them in.
    pub fn push(&mut self, message: AnyMessageOwned) -> Result<(), TransportError> {
        let frame: MessageFrame<AnyMessageOwned> = message
            .try_into()
            .map_err(|e| TransportError::Encode(format!("{e:?}")))?;
        let bytes = self
            .encoder
            .encode_transport(frame, &mut self.state)
            .map_err(|e| TransportError::Encode(e.to_string()))?;
        self.pending.extend_from_slice(&bytes);
        Ok(())
    }

    /// Whether messages wait for a flush.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes every pushed message. Never drop this future before it
    /// ends: a frame half written desynchronises the peer.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.pending).await?;
        self.io.flush().await?;
        self.pending.clear();
        Ok(())
    }

    /// `push` then `flush`.
    pub async fn send(&mut self, message: AnyMessageOwned) -> Result<(), TransportError> {
        self.push(message)?;
        self.flush().await
    }
}
