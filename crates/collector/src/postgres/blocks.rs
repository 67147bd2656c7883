//! Found blocks in `blocks`: the row of a `block_found` event, then the
//! status its later events record on it.

use tbg_events::EventData;
use tokio_postgres::Transaction;

use super::{finite, seq_to_i64};
use crate::{CollectorError, ParsedRecord};

pub(super) async fn insert_blocks(
    transaction: &Transaction<'_>,
    records: &[&ParsedRecord],
) -> Result<(), CollectorError> {
    for record in records {
        if let EventData::BlockFound {
            user,
            worker,
            height,
            hash,
            diff,
            network_diff,
            reward_sats,
            coinbase_sig,
        } = &record.event.data
        {
            transaction
                .execute(
                    "INSERT INTO blocks (block_height, block_hash, \"user\", worker_name, reward,
                                         difficulty, network_difficulty, coinbase_sig, source,
                                         region, found_at, event_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (event_id) DO NOTHING",
                    &[
                        &seq_to_i64(*height),
                        hash,
                        user,
                        worker,
                        &seq_to_i64(*reward_sats),
                        &finite(*diff),
                        &finite(*network_diff),
                        coinbase_sig,
                        &record.event.source,
                        &record.region,
                        &record.time,
                        &record.event_id,
                    ],
                )
                .await
                .map_err(CollectorError::pg("inserting blocks"))?;
        }
    }
    Ok(())
}

/// A found block's changes of status on its row: the nodes' answer
/// (`block_submitted`), then `block_confirmed` or `block_orphaned`. Each
/// update is idempotent and an older event never overwrites a newer
/// status, so replays and repeats change nothing.
pub(super) async fn record_block_submissions(
    transaction: &Transaction<'_>,
    records: &[ParsedRecord],
) -> Result<(), CollectorError> {
    for record in records {
        let result = match &record.event.data {
            EventData::BlockSubmitted {
                hash,
                accepted,
                answers,
                status,
                ..
            } => {
                // Events journaled before `status` existed: accepted or not.
                let status = match status.as_str() {
                    "" if *accepted => "accepted",
                    "" => "rejected",
                    other => other,
                };
                transaction
                    .execute(
                        // An orphaned block that a deeper reorganisation
                        // put back is submitted again later than it was
                        // orphaned; a replay of the first answer is not.
                        "UPDATE blocks SET status = $2, submitted_at = $3, node_answers = $4,
                                replaced_by = CASE WHEN status = 'orphaned' THEN NULL ELSE replaced_by END,
                                settled_at = CASE WHEN status = 'orphaned' THEN NULL ELSE settled_at END
                         WHERE block_hash = $1 AND (submitted_at IS NULL OR submitted_at <= $3)
                           AND status <> 'confirmed'
                           AND (status <> 'orphaned' OR settled_at < $3)",
                        &[hash, &status, &record.time, answers],
                    )
                    .await
            }
            EventData::BlockConfirmed {
                hash,
                confirmations,
                ..
            } => {
                transaction
                    .execute(
                        "UPDATE blocks SET status = 'confirmed', confirmed = true,
                                confirmations = $2, settled_at = $3
                         WHERE block_hash = $1",
                        &[hash, &seq_to_i64(*confirmations), &record.time],
                    )
                    .await
            }
            EventData::BlockOrphaned {
                hash, replaced_by, ..
            } => {
                transaction
                    .execute(
                        // Not over a later verdict (a replay of the whole
                        // history passes through it in order anyway).
                        "UPDATE blocks SET status = 'orphaned', confirmed = false,
                                replaced_by = $2, settled_at = $3
                         WHERE block_hash = $1 AND status <> 'confirmed'
                           AND (submitted_at IS NULL OR submitted_at <= $3)",
                        &[hash, replaced_by, &record.time],
                    )
                    .await
            }
            _ => continue,
        };
        result.map_err(CollectorError::pg("recording a block's status"))?;
    }
    Ok(())
}
