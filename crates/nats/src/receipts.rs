//! End-to-end receipts: the primary tells each relay which of its events it
//! holds, and the relay sends again what is missing.
//!
//! A publisher moves its cursor once JetStream has acked an event, but an
//! ack is not the last word: across leader elections and partitions a
//! replicated stream can lose a message it acked, or a consumer can stop
//! short of the stream's end (both seen in this project's chaos runs, and
//! reported upstream). Only the primary's journal is the truth. Every
//! message carries its relay journal seq (`Tbg-Seq`); the primary's ingest
//! keeps, per region, the seqs it has made durable ([`ReceiptBook`]) and
//! answers `tbg.receipts.<region>` with them ([`Receipt`]). The relay's
//! publisher asks now and then; a gap below its cursor that is still there
//! a grace period later ([`Reconciler`]) is published again under fresh
//! message ids (JetStream's duplicate window may remember the lost ones),
//! and the primary's journal stores each event once whatever comes twice.
//!
//! Pure: no I/O here, so the arithmetic is tested alone.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The subject a relay's publisher asks on: `tbg.receipts.<region>`.
pub fn receipt_subject(region: &str) -> String {
    format!("tbg.receipts.{}", crate::publisher::subject_token(region))
}

/// The header of each published event holding its relay journal seq.
pub const RELAY_SEQ_HEADER: &str = "Tbg-Seq";

/// Subjects the primary answers on.
pub const RECEIPT_SUBJECTS: &str = "tbg.receipts.*";

/// Regions the book keeps; events of more (a misconfigured fleet, a
/// stranger on NATS) are stored as always, but get no receipts.
pub const MAX_REGIONS: usize = 256;

/// Ranges above the covered seq kept per region. Past it the highest range
/// is forgotten: the relay then sends those events again (they are stored
/// once), so forgetting costs traffic, never an event.
pub const MAX_RANGES: usize = 1_024;

/// Ranges an answer lists (the lowest ones: the relay mends those first).
pub const MAX_REPORTED: usize = 64;

/// What the primary holds of one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Every seq up to this one is durable in the primary's journal (or
    /// came before the primary started keeping receipts of the region).
    pub covered: u64,
    /// Further runs of durable seqs above `covered`, lowest first,
    /// inclusive, disjoint, not adjacent.
    pub ranges: Vec<(u64, u64)>,
    /// The primary's consumer had nothing more to deliver at its last
    /// fetch: seqs the relay published before that and that are still
    /// above every range are missing, not late.
    pub caught_up: bool,
}

/// The seqs of each region durable in the primary's journal, compactly:
/// a covered prefix and the runs above it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceiptBook {
    regions: HashMap<String, Runs>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Runs {
    covered: u64,
    /// start -> end, inclusive, above `covered + 1`.
    above: BTreeMap<u64, u64>,
}

impl Runs {
    fn record(&mut self, seq: u64) {
        if seq <= self.covered {
            return;
        }
        // Merge with the run ending just before it and the one starting
        // just after it.
        let (mut start, mut end) = (seq, seq);
        if let Some((&prev_start, &prev_end)) = self.above.range(..=seq).next_back() {
            if prev_end >= seq {
                return;
            }
            if prev_end + 1 == seq {
                start = prev_start;
                self.above.remove(&prev_start);
            }
        }
        if let Some(next_end) = self.above.remove(&(seq + 1)) {
            end = next_end;
        }
        if start == self.covered + 1 {
            self.covered = end;
        } else {
            self.above.insert(start, end);
            if self.above.len() > MAX_RANGES {
                self.above.pop_last();
            }
        }
    }
}

/// Why a stored book cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("receipts file: {0}")]
pub struct ReceiptFileError(String);

#[derive(Serialize, Deserialize)]
struct StoredRuns {
    covered: u64,
    #[serde(default)]
    ranges: Vec<(u64, u64)>,
}

impl ReceiptBook {
    /// Records that `seq` of `region` is durable. A region seen for the
    /// first time starts covered up to the seq before: what came before the
    /// primary kept receipts cannot be told apart from what never existed.
    /// Returns whether the region is new to the book.
    pub fn record(&mut self, region: &str, seq: u64) -> bool {
        if let Some(runs) = self.regions.get_mut(region) {
            runs.record(seq);
            return false;
        }
        if self.regions.len() >= MAX_REGIONS || seq == 0 {
            return false;
        }
        self.regions.insert(
            region.to_owned(),
            Runs {
                covered: seq,
                above: BTreeMap::new(),
            },
        );
        true
    }

    /// What the book holds of `region` (`None`: nothing yet).
    pub fn receipt(&self, region: &str, caught_up: bool) -> Option<Receipt> {
        let runs = self.regions.get(region)?;
        Some(Receipt {
            covered: runs.covered,
            ranges: runs
                .above
                .iter()
                .take(MAX_REPORTED)
                .map(|(&start, &end)| (start, end))
                .collect(),
            caught_up,
        })
    }

    /// The book as the receipts file holds it (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        let stored: BTreeMap<&str, StoredRuns> = self
            .regions
            .iter()
            .map(|(region, runs)| {
                (
                    region.as_str(),
                    StoredRuns {
                        covered: runs.covered,
                        ranges: runs.above.iter().map(|(&s, &e)| (s, e)).collect(),
                    },
                )
            })
            .collect();
        serde_json::to_vec_pretty(&stored).unwrap_or_default()
    }

    /// A book read back from [`ReceiptBook::to_json`]; ranges that do not
    /// fit the book's rules are refused rather than trusted.
    pub fn from_json(bytes: &[u8]) -> Result<ReceiptBook, ReceiptFileError> {
        let stored: BTreeMap<String, StoredRuns> =
            serde_json::from_slice(bytes).map_err(|e| ReceiptFileError(e.to_string()))?;
        let mut book = ReceiptBook::default();
        for (region, stored) in stored.into_iter().take(MAX_REGIONS) {
            let mut runs = Runs {
                covered: stored.covered,
                above: BTreeMap::new(),
            };
            for (start, end) in stored.ranges {
                if start > end || end - start > 100_000_000 {
                    return Err(ReceiptFileError(format!(
                        "region {region}: range {start}-{end} is not a range"
                    )));
                }
                // Re-recorded run by run so the invariants hold.
                runs.record(start);
                if end > start {
                    insert_run(&mut runs, start, end);
                }
            }
            book.regions.insert(region, runs);
        }
        Ok(book)
    }
}

/// Adds the inclusive run `start..=end` (whose `start` is recorded) by its
/// end, merging what it touches.
fn insert_run(runs: &mut Runs, start: u64, end: u64) {
    if end <= runs.covered {
        return;
    }
    // The run holding `start` (or the covered prefix) is extended to `end`,
    // swallowing the runs it reaches.
    let begin = if start <= runs.covered + 1 {
        runs.covered + 1
    } else {
        runs.above
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s)
    };
    let mut new_end = end;
    let swallowed: Vec<u64> = runs
        .above
        .range(begin..=end.saturating_add(1))
        .map(|(&s, _)| s)
        .collect();
    for s in swallowed {
        if let Some(e) = runs.above.remove(&s) {
            new_end = new_end.max(e);
        }
    }
    if begin == runs.covered + 1 {
        runs.covered = new_end;
        // The prefix may now touch the next run.
        if let Some(e) = runs.above.remove(&(new_end + 1)) {
            runs.covered = e;
        }
    } else {
        runs.above.insert(begin, new_end);
    }
}

/// The seqs at or below `cursor` (everything the relay had acked when it
/// asked) that the receipt does not hold: the holes between its runs, and
/// past the last run while the primary is caught up.
pub fn missing(receipt: &Receipt, cursor: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut next = receipt.covered + 1;
    for &(start, end) in &receipt.ranges {
        if start > next {
            gaps.push((next, (start - 1).min(cursor)));
        }
        next = next.max(end + 1);
        if next > cursor {
            break;
        }
    }
    let listed_all = receipt.ranges.len() < MAX_REPORTED;
    if receipt.caught_up && listed_all && next <= cursor {
        gaps.push((next, cursor));
    }
    gaps.retain(|(start, end)| start <= end);
    gaps
}

/// The overlap of two sorted lists of disjoint inclusive ranges.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].0.max(b[j].0);
        let end = a[i].1.min(b[j].1);
        if start <= end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The relay's side: a gap is sent again only when it was missing at one
/// answer and still is at an answer at least `grace` later (events in
/// flight, a primary catching up, a publish retried by the publisher itself
/// all fill their gaps in the meantime).
#[derive(Debug)]
pub struct Reconciler {
    grace: Duration,
    /// The gaps of the oldest answer not yet compared, and when.
    suspect: Option<(Vec<(u64, u64)>, Instant)>,
}

impl Reconciler {
    pub fn new(grace: Duration) -> Reconciler {
        Reconciler {
            grace,
            suspect: None,
        }
    }

    /// Takes an answer; returns the ranges to send again (lowest first, at
    /// most `limit` seqs in all).
    pub fn observe(
        &mut self,
        receipt: &Receipt,
        cursor: u64,
        now: Instant,
        limit: u64,
    ) -> Vec<(u64, u64)> {
        let gaps = missing(receipt, cursor);
        let Some((suspect, since)) = &self.suspect else {
            self.suspect = Some((gaps, now));
            return Vec::new();
        };
        if now.duration_since(*since) < self.grace {
            return Vec::new();
        }
        let mut confirmed = intersect(suspect, &gaps);
        self.suspect = Some((gaps, now));
        let mut budget = limit;
        confirmed.retain_mut(|(start, end)| {
            if budget == 0 {
                return false;
            }
            let len = *end - *start + 1;
            if len > budget {
                *end = *start + budget - 1;
            }
            budget -= (*end - *start + 1).min(budget);
            true
        });
        confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_of(region: &str, seqs: impl IntoIterator<Item = u64>) -> ReceiptBook {
        let mut book = ReceiptBook::default();
        for seq in seqs {
            book.record(region, seq);
        }
        book
    }

    #[test]
    fn in_order_seqs_are_one_covered_prefix() {
        let book = book_of("eu", 1..=1_000);
        let receipt = book.receipt("eu", true).unwrap();
        assert_eq!(receipt.covered, 1_000);
        assert!(receipt.ranges.is_empty());
        assert!(missing(&receipt, 1_000).is_empty());
        assert_eq!(book.receipt("us", true), None);
    }

    #[test]
    fn a_lost_run_is_a_gap_until_it_comes() {
        let mut book = book_of("eu", (1..=100).chain(140..=200));
        let receipt = book.receipt("eu", false).unwrap();
        assert_eq!(
            (receipt.covered, receipt.ranges.clone()),
            (100, vec![(140, 200)])
        );
        assert_eq!(missing(&receipt, 200), vec![(101, 139)]);
        // Resent out of order, duplicates included.
        for seq in (101..=150).rev() {
            book.record("eu", seq);
        }
        let receipt = book.receipt("eu", false).unwrap();
        assert_eq!((receipt.covered, receipt.ranges), (200, vec![]));
    }

    #[test]
    fn the_tail_is_missing_only_while_the_primary_is_caught_up() {
        let book = book_of("eu", 1..=100);
        assert!(missing(&book.receipt("eu", false).unwrap(), 150).is_empty());
        assert_eq!(
            missing(&book.receipt("eu", true).unwrap(), 150),
            vec![(101, 150)]
        );
        // Nothing the relay has not acked yet is asked for.
        let book = book_of("eu", (1..=10).chain(20..=30).chain(50..=60));
        assert_eq!(
            missing(&book.receipt("eu", true).unwrap(), 25),
            vec![(11, 19)]
        );
        assert_eq!(
            missing(&book.receipt("eu", true).unwrap(), 45),
            vec![(11, 19), (31, 45)]
        );
    }

    #[test]
    fn a_new_region_starts_covered_at_its_first_seq() {
        let mut book = ReceiptBook::default();
        assert!(book.record("eu", 5_000));
        assert!(!book.record("eu", 5_001));
        assert_eq!(book.receipt("eu", true).unwrap().covered, 5_001);
    }

    #[test]
    fn runs_merge_from_both_sides() {
        let mut book = book_of("eu", [1, 10, 12, 14]);
        book.record("eu", 11);
        book.record("eu", 13);
        let receipt = book.receipt("eu", false).unwrap();
        assert_eq!((receipt.covered, receipt.ranges), (1, vec![(10, 14)]));
        for seq in 2..=9 {
            book.record("eu", seq);
        }
        assert_eq!(book.receipt("eu", false).unwrap().covered, 14);
    }

    #[test]
    fn the_book_is_bounded_in_regions_and_ranges() {
        let mut book = ReceiptBook::default();
        for region in 0..MAX_REGIONS + 10 {
            book.record(&format!("r{region}"), 1);
        }
        assert_eq!(book.regions.len(), MAX_REGIONS);
        book.record("r0", 1);
        for n in 0..(MAX_RANGES as u64 + 100) {
            book.record("r0", 10 + n * 2);
        }
        let runs = &book.regions["r0"];
        assert_eq!(runs.above.len(), MAX_RANGES);
        // The lowest runs stay: they are mended first.
        assert_eq!(runs.above.first_key_value(), Some((&10, &10)));
        assert_eq!(book.receipt("r0", true).unwrap().ranges.len(), MAX_REPORTED);
    }

    #[test]
    fn the_file_round_trips_and_refuses_nonsense() {
        let book = book_of("eu", (1..=100).chain(140..=200).chain(300..=300));
        let back = ReceiptBook::from_json(&book.to_json()).unwrap();
        assert_eq!(back, book);
        assert!(ReceiptBook::from_json(b"not json").is_err());
        assert!(ReceiptBook::from_json(br#"{"eu":{"covered":1,"ranges":[[9,3]]}}"#).is_err());
        // Overlapping or adjacent stored ranges are merged, not trusted.
        let merged = ReceiptBook::from_json(
            br#"{"eu":{"covered":5,"ranges":[[3,8],[9,12],[20,25],[22,30]]}}"#,
        )
        .unwrap();
        let receipt = merged.receipt("eu", false).unwrap();
        assert_eq!((receipt.covered, receipt.ranges), (12, vec![(20, 30)]));
    }

    #[test]
    fn a_gap_is_sent_again_only_when_it_outlives_the_grace() {
        let start = Instant::now();
        let grace = Duration::from_secs(60);
        let mut reconciler = Reconciler::new(grace);
        let lost = Receipt {
            covered: 100,
            ranges: vec![(140, 200)],
            caught_up: false,
        };
        assert!(reconciler.observe(&lost, 200, start, 1_000).is_empty());
        // Too soon.
        assert!(reconciler
            .observe(&lost, 200, start + Duration::from_secs(10), 1_000)
            .is_empty());
        assert_eq!(
            reconciler.observe(&lost, 200, start + grace, 1_000),
            vec![(101, 139)]
        );
        // A gap that filled meanwhile is not sent.
        let mended = Receipt {
            covered: 200,
            ranges: vec![],
            caught_up: false,
        };
        assert!(reconciler
            .observe(&mended, 200, start + grace * 2, 1_000)
            .is_empty());
    }

    #[test]
    fn a_resend_is_bounded_per_round() {
        let start = Instant::now();
        let mut reconciler = Reconciler::new(Duration::ZERO);
        let receipt = Receipt {
            covered: 0,
            ranges: vec![(1_001, 1_001), (2_001, 2_001)],
            caught_up: true,
        };
        reconciler.observe(&receipt, 3_000, start, 1_500);
        assert_eq!(
            reconciler.observe(&receipt, 3_000, start, 1_500),
            vec![(1, 1_000), (1_002, 1_501)]
        );
    }

    #[test]
    fn ranges_intersect() {
        assert_eq!(
            intersect(&[(1, 10), (20, 30)], &[(5, 25), (28, 40)]),
            vec![(5, 10), (20, 25), (28, 30)]
        );
        assert!(intersect(&[(1, 2)], &[(3, 4)]).is_empty());
    }
}
