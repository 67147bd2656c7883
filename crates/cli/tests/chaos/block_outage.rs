//! "block-during-outage": the money path under the worst timing. The node
//! is unreachable when a miner finds a block, and the pool is killed with
//! SIGKILL before any node could take it; the restarted pool must still
//! get that exact block into the node once the node answers again.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bitcoin::BlockHash;
use serde_json::{json, Value};
use tbg_chaos::process::RestartPolicy;
use tbg_chaos::stack::{http_get, Stack};
use tbg_chaos::wait_until;
use tbg_testkit::{regtest_address, AddressKind, ManualMiner};

use super::{describe, figure, options, record_recovery, secs, target, Run, Shared};

/// The names of the block store's files.
fn stored_files(stack: &Stack) -> Vec<String> {
    std::fs::read_dir(&stack.block_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|name| !name.starts_with('.') && name.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// The block store's record of a block found after `before` was listed,
/// once it is on disk.
/// The block `user` found, once it is in the store. (The load's miners
/// may find blocks of their own meanwhile: half of all regtest nonces are.)
async fn new_stored_block(stack: &Stack, before: &[String], user: &str) -> Result<Value> {
    let read = || -> Option<Value> {
        stored_files(stack)
            .into_iter()
            .filter(|name| !before.contains(name))
            .filter_map(|name| {
                serde_json::from_slice::<Value>(&std::fs::read(stack.block_dir.join(name)).ok()?)
                    .ok()
            })
            .find(|block| block["user"] == user)
    };
    wait_until(
        "the found block in the block store",
        Duration::from_secs(10),
        || read().is_some(),
    )
    .await
    .map_err(|e| anyhow!("{e}"))?;
    read().context("the block store's file")
}

/// The status of block `hash` in the pool's /status (None while the pool
/// does not answer or does not list it).
async fn status_of(stack: &Stack, hash: &str) -> Option<String> {
    let addr = stack.metrics_addr()?;
    let (status, body) = http_get(addr, "/status", Duration::from_secs(3))
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let value: Value = serde_json::from_str(&body).ok()?;
    value["blocks"]
        .as_array()?
        .iter()
        .find(|b| b["hash"] == hash)?["status"]
        .as_str()
        .map(str::to_string)
}

pub(super) async fn block_during_outage(report: Shared) -> Result<()> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/tbg-pool.service");
    let policy = RestartPolicy::from_unit_file(&unit)?;
    describe(
        &report,
        "the node's RPC closed; a miner finds a block (no node can take it); SIGKILL to the pool before any could; the pool restarted with the unit's policy; then the node's RPC back",
        "RPC back -> the node has the block found during the outage",
    );
    let mut run = Run::start(&report, options()).await?;
    let (address, payout) = regtest_address(AddressKind::P2tr);
    let mut finder = ManualMiner::connect(run.stack.pool_addr, &format!("{address}.finder")).await;
    let height = run.stack.node().block_count();
    run.stack.node().stop_rpc().await;

    let before = stored_files(&run.stack);
    let reply = finder.submit_valid(1).await;
    ensure!(
        reply.result == json!(true),
        "the block's share was not accepted: {:?}",
        reply.error
    );
    let found = Instant::now();
    let record = new_stored_block(&run.stack, &before, &address).await?;
    let on_disk = found.elapsed();
    let hash = record["hash"]
        .as_str()
        .and_then(|h| BlockHash::from_str(h).ok())
        .context("the stored block's hash")?;
    ensure!(
        record["status"] == "pending",
        "stored as {:?}, expected pending",
        record["status"]
    );

    run.stack.pool.signal("KILL")?;
    drop(finder);
    let new_pid = run
        .stack
        .pool
        .restart_on_exit(&policy, Duration::from_secs(5))
        .await?;
    run.pool_pid = new_pid;
    run.stack.wait_pool_up(Duration::from_secs(30)).await?;
    // The restarted pool took the block up again from its store.
    let stack = &run.stack;
    let mut resumed = false;
    let hash_text = hash.to_string();
    for _ in 0..100 {
        if status_of(stack, &hash_text).await.as_deref() == Some("pending") {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        resumed,
        "the restarted pool does not show the block pending; pool log:\n{}",
        run.stack.pool.log_tail(25)
    );
    ensure!(
        run.stack.node().get_block(&hash).is_none(),
        "the node had the block before it was reachable"
    );

    run.stack
        .node()
        .start_rpc()
        .await
        .map_err(|e| anyhow!("restarting the node's RPC: {e}"))?;
    let back = Instant::now();
    let node = run.stack.node();
    wait_until(
        "the node has the block found during the outage",
        Duration::from_secs(30),
        || node.get_block(&hash).is_some(),
    )
    .await
    .map_err(|e| anyhow!("{e}; pool log:\n{}", run.stack.pool.log_tail(20)))?;
    let recovery = back.elapsed();
    record_recovery(&report, recovery);
    let block = node.get_block(&hash).context("the block")?;
    ensure!(
        block.txdata[0].output[0].script_pubkey == payout,
        "the block does not pay its finder"
    );
    figure(
        &report,
        "timeline",
        format!(
            "block at height {} on disk {:.0} ms after its share; pool killed and restarted (pid {new_pid}); the node has it {:.2} s after its RPC is back",
            height + 1,
            on_disk.as_secs_f64() * 1000.0,
            secs(recovery)
        ),
    );
    // The paced miners of the stack mine on the same last work during the
    // outage: their blocks at that height are resubmitted too, and one of
    // the pool's blocks wins. Ours is then accepted, or stale behind
    // another block this pool found, never lost.
    let pg = &run.stack.pg;
    let status_sql = format!("SELECT status FROM blocks WHERE block_hash = '{hash}'");
    wait_until(
        "the block settled in PostgreSQL",
        Duration::from_secs(30),
        || matches!(pg.psql(&status_sql).as_str(), "accepted" | "stale"),
    )
    .await
    .map_err(|e| anyhow!("{e}: blocks row {:?}", pg.psql(&status_sql)))?;
    let status = pg.psql(&status_sql);
    let winner = pg.psql(&format!(
        "SELECT block_hash FROM blocks WHERE block_height = {} AND status = 'accepted'",
        height + 1
    ));
    let on_chain = node
        .get_block(&BlockHash::from_str(&winner).context("the accepted block at that height")?)
        .is_some();
    ensure!(
        on_chain && (status == "accepted") == (winner == hash.to_string()),
        "at height {}: ours {status}, the pool's accepted block {winner:?} (on the node: {on_chain})",
        height + 1
    );
    figure(
        &report,
        "PostgreSQL blocks.status",
        format!("{status} (the pool's block accepted at that height: {winner})"),
    );
    target(&report, "node back -> block accepted", recovery)?;
    run.finish(1).await
}
