//! One `mining.notify` per (payout user, template), shared by that user's
//! sessions.
//!
//! When a block arrives every session needs a job at once. The coinbase pays
//! the session's own payout address, so it is per user; everything else
//! (prevhash, merkle branch, version, nbits, ntime) is per template. The
//! first session of a user builds the coinbase and the serialized line; the
//! others reuse both, so the fan-out costs each further session a map lookup
//! and a copy of the line into its write buffer.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bitcoin::{Script, ScriptBuf};
use parking_lot::Mutex;
use tbg_work::{build_coinbase, CoinbaseParts, JobTemplate, Template, WorkError};

/// A job as sent to every session of one user for one template.
#[derive(Debug)]
pub(crate) struct UserJob {
    pub(crate) id: Arc<str>,
    pub(crate) coinbase: Arc<CoinbaseParts>,
    /// The whole `mining.notify` line, newline included.
    pub(crate) line: Arc<str>,
}

/// What the coinbase depends on besides the template and the payout script.
struct CachedJob {
    user_sig: Option<String>,
    pool_tag: String,
    job: Arc<UserJob>,
}

/// The jobs already built for one template, by payout script.
#[derive(Default)]
pub(crate) struct NotifyCache {
    /// Looked up once per session and template; the lock is held for the
    /// lookup or the insert only, never while a coinbase is built.
    jobs: Mutex<HashMap<ScriptBuf, Vec<CachedJob>>>,
}

impl fmt::Debug for NotifyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyCache")
            .field("users", &self.jobs.lock().len())
            .finish()
    }
}

/// Everything that makes a user's coinbase and notify line.
pub(crate) struct JobInputs<'a> {
    pub(crate) template: &'a Template,
    pub(crate) job_template: &'a JobTemplate,
    pub(crate) payout: &'a Script,
    pub(crate) pool_tag: &'a str,
    pub(crate) user_sig: Option<&'a str>,
    pub(crate) extranonce1_len: usize,
    pub(crate) extranonce2_len: usize,
    pub(crate) clean_jobs: bool,
}

impl NotifyCache {
    /// The shared job for this user, built (with a new id from `next_id`)
    /// on first use. Every caller for one cache must pass the same
    /// `clean_jobs` (the one of the template's broadcast).
    pub(crate) fn get_or_build(
        &self,
        inputs: &JobInputs<'_>,
        next_id: impl FnOnce() -> u64,
    ) -> Result<Arc<UserJob>, WorkError> {
        let matches = |cached: &CachedJob| {
            cached.user_sig.as_deref() == inputs.user_sig && cached.pool_tag == inputs.pool_tag
        };
        if let Some(found) = self
            .jobs
            .lock()
            .get(inputs.payout)
            .and_then(|entries| entries.iter().find(|c| matches(c)))
        {
            return Ok(found.job.clone());
        }
        let built = Arc::new(build_user_job(inputs, next_id())?);
        let mut jobs = self.jobs.lock();
        let entries = jobs.entry(inputs.payout.to_owned()).or_default();
        // Another session of this user may have built it meanwhile: keep
        // one job id per user and template.
        if let Some(found) = entries.iter().find(|c| matches(c)) {
            return Ok(found.job.clone());
        }
        entries.push(CachedJob {
            user_sig: inputs.user_sig.map(str::to_string),
            pool_tag: inputs.pool_tag.to_string(),
            job: built.clone(),
        });
        Ok(built)
    }
}

/// Builds one user's coinbase and notify line.
pub(crate) fn build_user_job(inputs: &JobInputs<'_>, id: u64) -> Result<UserJob, WorkError> {
    let coinbase = build_coinbase(
        inputs.template,
        inputs.payout,
        inputs.pool_tag,
        inputs.user_sig,
        inputs.extranonce1_len,
        inputs.extranonce2_len,
    )?;
    let id = format!("{id:016x}");
    let line = notify_line(&id, inputs.job_template, &coinbase, inputs.clean_jobs);
    Ok(UserJob {
        id: id.into(),
        coinbase: Arc::new(coinbase),
        line: line.into(),
    })
}

/// The `mining.notify` line; built once per user and template, so the
/// stratum crate's builder is cheap enough here.
fn notify_line(
    job_id: &str,
    template: &JobTemplate,
    coinbase: &CoinbaseParts,
    clean_jobs: bool,
) -> String {
    tbg_stratum::notify(&tbg_stratum::NotifyParams {
        job_id: job_id.to_string(),
        prevhash: template.prevhash_hex.clone(),
        coinb1: hex::encode(&coinbase.coinb1),
        coinb2: hex::encode(&coinbase.coinb2),
        merkle_branch: template.merkle_branch_hex.clone(),
        version: template.version_hex.clone(),
        nbits: template.nbits_hex.clone(),
        ntime: template.ntime_hex.clone(),
        clean_jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbg_stratum::NotifyParams;

    fn regtest_template(transactions: u32) -> Template {
        use bitcoin::hashes::Hash;
        let transactions = (0..transactions)
            .map(|i| {
                let seed = bitcoin::Txid::hash(&i.to_le_bytes());
                tbg_work::TemplateTx {
                    // Content does not matter for the notify line.
                    data: vec![i as u8; 60],
                    txid: seed,
                    wtxid: bitcoin::Wtxid::from_byte_array(seed.to_byte_array()),
                    fee: 100,
                }
            })
            .collect();
        let bits = bitcoin::CompactTarget::from_consensus(0x207f_ffff);
        Template {
            height: 101,
            version: 0x2000_0000,
            previous_block_hash: bitcoin::BlockHash::hash(b"previous"),
            bits,
            cur_time: 1_700_000_100,
            min_time: 1_700_000_000,
            coinbase_value: 5_000_000_000,
            transactions,
            default_witness_commitment: None,
            target: bitcoin::Target::from_compact(bits),
        }
    }

    #[test]
    fn line_is_what_the_stratum_crate_writes() {
        for transactions in [0, 1, 5] {
            let template = Arc::new(regtest_template(transactions));
            let job_template = JobTemplate::new(template.clone());
            let payout = ScriptBuf::from_bytes(vec![
                0x00, 0x14, 7u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
            ]);
            let inputs = JobInputs {
                template: &template,
                job_template: &job_template,
                payout: &payout,
                pool_tag: "/tbg/",
                user_sig: Some("sig"),
                extranonce1_len: 4,
                extranonce2_len: 8,
                clean_jobs: transactions % 2 == 0,
            };
            let job = build_user_job(&inputs, 0xabc).expect("builds");
            let expected = tbg_stratum::notify(&NotifyParams {
                job_id: "0000000000000abc".into(),
                prevhash: job_template.prevhash_hex.clone(),
                coinb1: hex::encode(&job.coinbase.coinb1),
                coinb2: hex::encode(&job.coinbase.coinb2),
                merkle_branch: job_template.merkle_branch_hex.clone(),
                version: job_template.version_hex.clone(),
                nbits: job_template.nbits_hex.clone(),
                ntime: job_template.ntime_hex.clone(),
                clean_jobs: inputs.clean_jobs,
            });
            assert_eq!(&*job.line, expected.as_str());
            assert_eq!(&*job.id, "0000000000000abc");
        }
    }

    #[test]
    fn one_job_per_user_and_signature() {
        let template = Arc::new(regtest_template(1));
        let job_template = JobTemplate::new(template.clone());
        let alice = ScriptBuf::from_bytes(vec![0x51]);
        let bob = ScriptBuf::from_bytes(vec![0x52]);
        let cache = NotifyCache::default();
        let mut ids = 0u64;
        let mut get = |payout: &Script, user_sig: Option<&str>| {
            let inputs = JobInputs {
                template: &template,
                job_template: &job_template,
                payout,
                pool_tag: "/tbg/",
                user_sig,
                extranonce1_len: 4,
                extranonce2_len: 8,
                clean_jobs: true,
            };
            cache
                .get_or_build(&inputs, || {
                    ids += 1;
                    ids
                })
                .expect("builds")
        };
        let alice_1 = get(&alice, None);
        let alice_2 = get(&alice, None);
        assert!(Arc::ptr_eq(&alice_1, &alice_2), "same user: one shared job");
        let bob_job = get(&bob, None);
        assert_ne!(alice_1.id, bob_job.id);
        assert_ne!(
            alice_1.coinbase.coinb2, bob_job.coinbase.coinb2,
            "each pays its own address"
        );
        let alice_signed = get(&alice, Some("sig"));
        assert_ne!(
            alice_1.id, alice_signed.id,
            "a new signature means a new coinbase"
        );
        assert_eq!(ids, 3);
    }
}
