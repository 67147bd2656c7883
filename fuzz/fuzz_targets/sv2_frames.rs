//! Bytes a stranger sends on the Stratum V2 port once the Noise layer has
//! decrypted them: the reference implementation's frame decoder and
//! message parser, as the pool's reader runs them (`tbg_sv2::transport`).
//!
//! Asserts, besides "never panics": a message that parses is encoded again
//! into a frame that parses back to the same message, so what the pool
//! reads is what a peer meant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tbg_sv2::parsers_sv2::{AnyMessage, AnyMessageOwned};
use tbg_sv2::stratum_core::codec_sv2::{Decoded, Decoder, Encoder, MessageFrame};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    let mut rest = data;
    // At most 16 frames: the input is bytes on one connection.
    for _ in 0..16 {
        let frame = loop {
            let window = decoder.writable_len();
            if window > rest.len() {
                return;
            }
            if window > 0 {
                decoder.writable().copy_from_slice(&rest[..window]);
                rest = &rest[window..];
            }
            match decoder.next_frame() {
                Ok(Decoded::Frame(frame)) => break frame,
                Ok(Decoded::Incomplete(_)) => {}
                Err(_) => return,
            }
        };
        let mut frame = frame;
        let header = frame.header();
        let Ok(message) = AnyMessage::try_from((header, frame.payload())) else {
            continue;
        };
        let owned: AnyMessageOwned = message.into_owned();
        let Ok(again): Result<MessageFrame<AnyMessageOwned>, _> = owned.clone().try_into() else {
            continue;
        };
        let mut encoder = Encoder::new();
        let bytes = encoder.encode(again).expect("a parsed message encodes").to_vec();
        let mut redecoder = Decoder::new();
        let mut input = &bytes[..];
        let mut reparsed = loop {
            let window = redecoder.writable_len();
            assert!(window <= input.len(), "the encoded frame is complete");
            redecoder.writable().copy_from_slice(&input[..window]);
            input = &input[window..];
            match redecoder.next_frame().expect("our own frame decodes") {
                Decoded::Frame(frame) => break frame,
                Decoded::Incomplete(_) => {}
            }
        };
        let reheader = reparsed.header();
        let round = AnyMessage::try_from((reheader, reparsed.payload()))
            .expect("our own frame parses")
            .into_owned();
        assert_eq!(format!("{round:?}"), format!("{owned:?}"), "round trip");
    }
});
