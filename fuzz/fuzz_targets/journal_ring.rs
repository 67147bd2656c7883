//! The journal's staging ring as a previous process could have left it:
//! the input is decoded into a ring file image (a header, then appends as
//! the writer makes them, with the crate's own encoder, mixed with
//! corruption: flipped bytes, raw bytes, seq jumps, stray wrap markers,
//! records whose payload was changed and checksummed again), and recovered
//! with the journal's own recovery (`tbg_journal::fuzzing::recover_image`,
//! the code the journal runs at open).
//!
//! Asserts, besides "never panics" (it found an overflow on a tail near
//! 2^64: fixed): a header is refused exactly when the documented layout
//! says so; every recovered record is in the image, at
//! the place its `end` says, with a record magic, this generation's tag, a
//! header and a payload checksum that match (recomputed here with crc32c),
//! its payload byte for byte, and its seq; records come back in one run of
//! consecutive seqs above the committed one, inside one lap from the tail;
//! and an image made only of the writer's appends (flag 0x80) gives back
//! exactly the records appended after the committed seq.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tbg_journal::fuzzing::{record, recover_image, wrap_marker, Row, Stop};

const HEADER_BYTES: usize = 4096;
const RECORD_HEADER_BYTES: usize = 32;
const MIN_CAPACITY: u64 = tbg_journal::MIN_STAGE_BYTES;
/// Ops decoded from one input at most (bounds the time per input).
const MAX_OPS: usize = 256;

/// Reads the input front to back; past its end, zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }
    fn byte(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    fn text(&mut self, max: usize) -> String {
        let n = usize::from(self.byte()) % (max + 1);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

/// crc32c over the generation, then `bytes`, as the layout documents.
fn crc(generation: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), bytes)
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// The ring being built: bytes after the header page, logical positions.
struct Ring {
    bytes: Vec<u8>,
    capacity: u64,
}

impl Ring {
    fn offset(&self, position: u64) -> usize {
        (position % self.capacity) as usize
    }
    /// Writes byte by byte, wrapping at the ring's end.
    fn write(&mut self, position: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            let at = self.offset(position.wrapping_add(i as u64));
            self.bytes[at] = *byte;
        }
    }
}

/// An append the writer made, for the clean-image check.
struct Appended {
    row: Row,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let flags = input.byte();
    let clean = flags & 0x80 != 0;
    let generation = input.u64();
    let mut capacity = MIN_CAPACITY + u64::from(input.byte() % 4) * 8;
    if flags & 0x10 != 0 {
        capacity += 4; // not a multiple of 8: the header must be refused
    }
    let tail = if flags & 0x40 != 0 {
        input.u64()
    } else {
        u64::from(input.u16()) * 8 + u64::from(input.byte()) * capacity
    };
    let first_seq = if flags & 0x40 != 0 {
        input.u64()
    } else {
        u64::from(input.u32())
    };
    let committed_seq = first_seq
        .saturating_add(u64::from(input.byte()))
        .saturating_sub(128);

    let mut ring = Ring {
        bytes: vec![0u8; capacity as usize],
        capacity,
    };
    let mut appended: Vec<Appended> = Vec::new();
    let mut position = tail;
    let mut seq = first_seq;
    let mut last_record: Option<(u64, usize)> = None;
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        let op = input.byte() % 10;
        if clean || op < 5 {
            let ts = f64::from_bits(input.u64());
            let event_id = input.text(48);
            let event_type = input.text(24);
            let region = input.text(8);
            let json_len = usize::from(input.u16() % 600);
            let json = String::from_utf8_lossy(input.bytes(json_len)).into_owned();
            let bytes = record(generation, seq, &event_id, ts, &event_type, &region, &json);
            // Placed as the writer places it: never split at the ring's end;
            // a wrap marker first when one fits before the end.
            let room = capacity - position % capacity;
            let skip = if bytes.len() as u64 > room { room } else { 0 };
            let used = position.wrapping_sub(tail);
            if clean && used + skip + bytes.len() as u64 > capacity {
                break; // the writer refuses an append to a full ring
            }
            if skip >= RECORD_HEADER_BYTES as u64 {
                ring.write(position, &wrap_marker(generation, seq));
            }
            position = position.wrapping_add(skip);
            ring.write(position, &bytes);
            last_record = Some((position, bytes.len()));
            position = position.wrapping_add(bytes.len() as u64);
            appended.push(Appended {
                row: Row {
                    seq,
                    end: position,
                    event_id,
                    ts,
                    event_type,
                    region,
                    payload: json,
                },
            });
            // Seqs never wrap in a real journal (u64).
            let Some(next) = seq.checked_add(1) else {
                break;
            };
            seq = next;
            continue;
        }
        match op {
            5 => seq = seq.wrapping_add(u64::from(input.byte()) + 2),
            6 => {
                let span = position.wrapping_sub(tail).min(capacity) + 1;
                let back = u64::from(input.u16()) % span;
                let at = position.wrapping_sub(back);
                let at = ring.offset(at);
                ring.bytes[at] ^= input.byte() | 1;
            }
            7 => {
                // Change the last record's payload (or its length) and
                // checksum it again: past the checksums, into the decoder.
                let Some((start, len)) = last_record else {
                    continue;
                };
                let at = ring.offset(start);
                if at + len > ring.bytes.len() {
                    continue;
                }
                let record = &mut ring.bytes[at..at + len];
                if input.byte() & 1 == 0 {
                    put_u32(record, 4, input.u32() % 2048);
                } else {
                    let index = RECORD_HEADER_BYTES + usize::from(input.u16()) % (len - 32).max(1);
                    let value = input.byte();
                    if let Some(byte) = record.get_mut(index) {
                        *byte = value;
                    }
                }
                let payload_len = u32::from_le_bytes(record[4..8].try_into().unwrap()) as usize;
                let payload_end = (RECORD_HEADER_BYTES + payload_len).min(len);
                let payload_crc = crc(generation, &record[RECORD_HEADER_BYTES..payload_end]);
                put_u32(record, 20, payload_crc);
                let header_crc = crc(generation, &record[0..24]);
                put_u32(record, 24, header_crc);
            }
            8 => {
                let n = usize::from(input.byte());
                let raw = input.bytes(n).to_vec();
                ring.write(position, &raw);
                position = position.wrapping_add(raw.len() as u64);
            }
            _ => {
                let marker = wrap_marker(generation, input.u64());
                ring.write(position, &marker);
            }
        }
    }

    // The header page, per the layout; flags break one field each.
    let mut image = vec![0u8; HEADER_BYTES];
    image[0..8].copy_from_slice(if flags & 0x01 != 0 {
        b"TBGSTAGF"
    } else {
        b"TBGSTAGE"
    });
    put_u32(&mut image, 8, if flags & 0x02 != 0 { 2 } else { 1 });
    image[16..24].copy_from_slice(&generation.to_le_bytes());
    image[24..32].copy_from_slice(&capacity.to_le_bytes());
    let header_crc = crc(generation, &image[0..32]) ^ u32::from(flags & 0x04 != 0);
    put_u32(&mut image, 32, header_crc);
    image[64..72].copy_from_slice(&tail.to_le_bytes());
    let tail_crc = crc(generation, &image[64..72]) ^ u32::from(flags & 0x08 != 0);
    put_u32(&mut image, 72, tail_crc);
    image.extend_from_slice(&ring.bytes);
    if flags & 0x20 != 0 {
        let cut = usize::from(input.u16()) % image.len() + 1;
        image.truncate(image.len() - cut);
    }

    let recovery = recover_image(&image, committed_seq);

    // A tail within two ring lengths of 2^64 (no journal writes 2^64 bytes)
    // is refused too: this target found recovery overflowing on one.
    let header_broken = flags & 0x1f != 0
        || image.len() < HEADER_BYTES + ring.bytes.len()
        || tail % 8 != 0
        || tail.checked_add(2 * capacity).is_none();
    assert_eq!(
        recovery.unusable_header.is_some(),
        header_broken,
        "header judged against the layout: {:?}",
        recovery.unusable_header
    );
    if header_broken {
        assert!(recovery.rows.is_empty() && recovery.already_committed == 0);
        assert!(recovery.stop.is_none());
        return;
    }

    let mut previous: Option<&Row> = None;
    for row in &recovery.rows {
        assert!(
            row.seq > committed_seq,
            "a committed record recovered again"
        );
        if let Some(previous) = previous {
            assert_eq!(
                Some(row.seq),
                previous.seq.checked_add(1),
                "seqs not consecutive"
            );
            assert!(row.end > previous.end);
        }
        previous = Some(row);
        check_in_image(&image, generation, capacity, tail, row);
    }
    if let Some(Stop::Invalid { file_offset, .. }) = &recovery.stop {
        assert!((HEADER_BYTES as u64..HEADER_BYTES as u64 + capacity).contains(file_offset));
    }

    if clean {
        let expected: Vec<&Row> = appended
            .iter()
            .map(|a| &a.row)
            .filter(|row| row.seq > committed_seq)
            .collect();
        let committed = appended.len() - expected.len();
        assert!(
            !matches!(recovery.stop, Some(Stop::Invalid { .. })),
            "a clean image is damaged: {:?}",
            recovery.stop
        );
        assert_eq!(recovery.already_committed, committed as u64);
        assert_eq!(recovery.rows.len(), expected.len(), "appends lost");
        for (got, want) in recovery.rows.iter().zip(expected) {
            assert_eq!(
                (got.seq, got.end, &got.event_id, got.ts.to_bits()),
                (want.seq, want.end, &want.event_id, want.ts.to_bits())
            );
            assert_eq!(
                (&got.event_type, &got.region),
                (&want.event_type, &want.region)
            );
            assert_eq!(got.payload, want.payload);
        }
    }
});

/// The record `row` came from is in the image, intact, where `end` says.
fn check_in_image(image: &[u8], generation: u64, capacity: u64, tail: u64, row: &Row) {
    let mut payload = row.ts.to_le_bytes().to_vec();
    for text in [&row.event_id, &row.event_type, &row.region] {
        payload.extend_from_slice(&(text.len() as u32).to_le_bytes());
        payload.extend_from_slice(text.as_bytes());
    }
    payload.extend_from_slice(row.payload.as_bytes());
    let record_bytes = (RECORD_HEADER_BYTES + payload.len()).div_ceil(8) as u64 * 8;
    let start = row
        .end
        .checked_sub(record_bytes)
        .expect("end before the record");
    assert!(start >= tail, "a record before the tail");
    assert!(
        row.end - tail <= capacity,
        "a record past one lap from the tail"
    );
    let offset = (start % capacity) as usize;
    assert!(
        offset as u64 + record_bytes <= capacity,
        "a record split at the ring's end"
    );
    let at = HEADER_BYTES + offset;
    let header = &image[at..at + RECORD_HEADER_BYTES];
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    assert_eq!(&header[0..4], b"TBGR", "not a record");
    assert_eq!(word(4) as usize, payload.len(), "payload length");
    assert_eq!(
        u64::from_le_bytes(header[8..16].try_into().unwrap()),
        row.seq
    );
    assert_eq!(word(16), generation as u32, "another generation's record");
    assert_eq!(word(24), crc(generation, &header[0..24]), "header checksum");
    let stored = &image[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + payload.len()];
    assert_eq!(stored, &payload[..], "payload differs from the image");
    assert_eq!(word(20), crc(generation, stored), "payload checksum");
}
