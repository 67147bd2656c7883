//! The pages, server-rendered HTML: readable without script, on a phone
//! (one column, tables scroll sideways), with semantic headings and table
//! headers for screen readers. Pure functions of the data: no I/O.

use tbg_pool::{BlockRecord, BlockStatus, PoolStatus, UserSnapshot};

use crate::chart::hashrate_chart;
use crate::format::{self, escape};

/// What the pool page shows.
pub struct PoolPage<'a> {
    pub status: &'a PoolStatus,
    pub hashrate_5m: f64,
    pub hashrate_1h: f64,
    pub users_connected: usize,
    pub workers_connected: u64,
    pub blocks: &'a [BlockRecord],
    pub history: &'a [f64],
    /// What the history covers (`24 h` once full).
    pub span: String,
    pub network: &'a str,
}

/// What an address's page shows.
pub struct AddressPage<'a> {
    pub user: &'a UserSnapshot,
    /// Session, 7-day and all-time best shares (`best.rs`).
    pub best: crate::best::BestShares,
    pub blocks: &'a [BlockRecord],
    /// `None`: no chart kept for this address (see `history.rs`).
    pub history: Option<&'a [f64]>,
    /// What the history covers.
    pub span: String,
    /// The last 30 days from PostgreSQL, newest first (empty without it).
    pub days: &'a [crate::pg::Day],
}

const STYLE: &str = include_str!("style.css");

fn page(title: &str, body: &str) -> String {
    format!(
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<meta http-equiv=\"refresh\" content=\"60\">",
            "<title>{title}</title><style>{style}</style></head><body>",
            "<header><a href=\"/\" class=\"brand\">tbg solo pool</a>",
            "<form action=\"/address\" method=\"get\" role=\"search\">",
            "<label for=\"address\">Your address</label>",
            "<input id=\"address\" name=\"address\" autocomplete=\"off\" spellcheck=\"false\" placeholder=\"bc1q…\" required>",
            "<button type=\"submit\">Show</button></form></header>",
            "<main>{body}</main>",
            "<footer>Solo mining: a block pays its finder. Figures refresh every minute.</footer>",
            "</body></html>"
        ),
        title = escape(title),
        style = STYLE,
        body = body,
    )
}

fn stat(label: &str, value: &str, id: &str) -> String {
    format!("<div class=\"stat\"><dt>{label}</dt><dd id=\"{id}\">{value}</dd></div>")
}

fn status_label(status: BlockStatus) -> (&'static str, &'static str) {
    match status {
        BlockStatus::Pending => ("pending", "submitted, no node has taken it yet"),
        BlockStatus::Accepted => ("accepted", "on the best chain, maturing"),
        BlockStatus::Confirmed => ("confirmed", "100 confirmations: the reward is spendable"),
        BlockStatus::Orphaned => ("orphaned", "reorganised away"),
        BlockStatus::Stale => ("stale", "another block took its height first"),
        BlockStatus::Rejected => ("rejected", "refused by the nodes"),
    }
}

fn blocks_table(blocks: &[BlockRecord], with_finder: bool) -> String {
    if blocks.is_empty() {
        return "<p>No block found yet.</p>".to_owned();
    }
    let mut rows = String::new();
    let mut sorted: Vec<&BlockRecord> = blocks.iter().collect();
    sorted.sort_by(|a, b| b.found_at.cmp(&a.found_at).then(b.height.cmp(&a.height)));
    for block in sorted {
        let (label, meaning) = status_label(block.status);
        let finder = if with_finder {
            format!(
                "<td><a href=\"/address/{a}\">{a}</a></td>",
                a = escape(&block.user)
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td>{height}</td><td class=\"hash\">{hash}</td>{finder}<td>{reward:.8} BTC</td><td><span class=\"badge {label}\" title=\"{meaning}\">{label}</span></td><td>{confirmations}</td></tr>",
            height = block.height,
            hash = escape(&block.hash),
            reward = block.reward_sats as f64 / 1e8,
            confirmations = block.confirmations,
        ));
    }
    let finder_head = if with_finder {
        "<th scope=\"col\">Finder</th>"
    } else {
        ""
    };
    format!(
        "<div class=\"scroll\"><table id=\"blocks\"><caption>Blocks found</caption><thead><tr><th scope=\"col\">Height</th><th scope=\"col\">Hash</th>{finder_head}<th scope=\"col\">Reward</th><th scope=\"col\">Status</th><th scope=\"col\">Confirmations</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
}

pub fn pool_page(data: &PoolPage<'_>) -> String {
    let s = data.status;
    let node = if s.node_up {
        "<p class=\"ok\">Connected to Bitcoin Core.</p>".to_owned()
    } else {
        "<p class=\"warn\" role=\"status\">No node answers: miners keep the last work until one is back.</p>".to_owned()
    };
    let stats = [
        stat(
            "Hashrate (5 min)",
            &format::hashrate(data.hashrate_5m),
            "hashrate-5m",
        ),
        stat(
            "Hashrate (1 h)",
            &format::hashrate(data.hashrate_1h),
            "hashrate-1h",
        ),
        stat("Miners connected", &s.miners.to_string(), "miners"),
        stat(
            "Addresses mining",
            &data.users_connected.to_string(),
            "users",
        ),
        stat("Workers", &data.workers_connected.to_string(), "workers"),
        stat(
            "Network difficulty",
            &format::difficulty(s.network_difficulty),
            "network-difficulty",
        ),
        stat("Mining height", &s.template_height.to_string(), "height"),
        stat("Blocks found", &s.blocks_found.to_string(), "blocks-found"),
    ]
    .concat();
    let body = format!(
        "<h1>Pool <small>{network}</small></h1>{node}<dl class=\"stats\">{stats}</dl><h2>Hashrate, last 24 h</h2>{chart}<h2>Blocks</h2>{blocks}",
        network = escape(data.network),
        chart = hashrate_chart(data.history, &data.span),
        blocks = blocks_table(data.blocks, true),
    );
    page("tbg solo pool", &body)
}

pub fn address_page(data: &AddressPage<'_>) -> String {
    let user = data.user;
    let last_share = user
        .workers
        .iter()
        .filter_map(|w| w.seconds_since_last_share)
        .fold(None, |best: Option<f64>, s| {
            Some(best.map_or(s, |b| b.min(s)))
        });
    let stats = [
        stat(
            "Hashrate (1 min)",
            &format::hashrate(user.hashrate_1m),
            "hashrate-1m",
        ),
        stat(
            "Hashrate (5 min)",
            &format::hashrate(user.hashrate_5m),
            "hashrate-5m",
        ),
        stat(
            "Hashrate (1 h)",
            &format::hashrate(user.hashrate_1h),
            "hashrate-1h",
        ),
        stat(
            "Hashrate (1 d)",
            &format::hashrate(user.hashrate_1d),
            "hashrate-1d",
        ),
        stat(
            "Workers connected",
            &user.workers_connected.to_string(),
            "workers-connected",
        ),
        stat(
            "Shares accepted",
            &user.shares_accepted.to_string(),
            "shares-accepted",
        ),
        stat(
            "Reject rate",
            &format::percent(
                user.shares_rejected,
                user.shares_accepted + user.shares_rejected,
            ),
            "reject-rate",
        ),
        stat(
            "Best share (session)",
            &format::difficulty(data.best.session),
            "best-share-session",
        ),
        stat(
            "Best share (7 days)",
            &format::difficulty(data.best.week),
            "best-share-week",
        ),
        stat(
            "Best share (all time)",
            &format::difficulty(data.best.all_time),
            "best-share-alltime",
        ),
        stat(
            "Last share",
            &last_share.map_or("never".to_owned(), format::ago),
            "last-share",
        ),
    ]
    .concat();
    let mut rows = String::new();
    for w in &user.workers {
        rows.push_str(&format!(
            "<tr><th scope=\"row\">{name}</th><td>{h1m}</td><td>{h5m}</td><td>{h1h}</td><td>{h1d}</td><td>{last}</td><td>{rejects}</td><td>{best}</td><td>{online}</td></tr>",
            name = if w.worker.is_empty() { "(default)".to_owned() } else { escape(&w.worker) },
            h1m = format::hashrate(w.hashrate_1m),
            h5m = format::hashrate(w.hashrate_5m),
            h1h = format::hashrate(w.hashrate_1h),
            h1d = format::hashrate(w.hashrate_1d),
            last = w.seconds_since_last_share.map_or("never".to_owned(), format::ago),
            rejects = format::percent(w.shares_rejected, w.shares_accepted + w.shares_rejected),
            best = format::difficulty(w.best_difficulty_session),
            online = if w.connections > 0 { "online" } else { "offline" },
        ));
    }
    let chart = match data.history {
        Some(points) => hashrate_chart(points, &data.span),
        None => "<p class=\"chart-empty\">No chart for this address yet: it starts with its first sampled hashrate.</p>".to_owned(),
    };
    let body = format!(
        concat!(
            "<h1>Miner <span class=\"hash\" id=\"address-shown\">{address}</span></h1>",
            "<dl class=\"stats\">{stats}</dl>",
            "<h2>Hashrate, last 24 h</h2>{chart}",
            "<h2>Workers</h2><div class=\"scroll\"><table id=\"workers\"><caption>Workers of this address (best share of the current session)</caption>",
            "<thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">1 min</th><th scope=\"col\">5 min</th><th scope=\"col\">1 h</th><th scope=\"col\">1 d</th><th scope=\"col\">Last share</th><th scope=\"col\">Rejects</th><th scope=\"col\">Best share</th><th scope=\"col\">State</th></tr></thead>",
            "<tbody>{rows}</tbody></table></div>",
            "{days}<h2>Blocks of this address</h2>{blocks}"
        ),
        days = days_table(data.days),
        address = escape(&user.address),
        stats = stats,
        chart = chart,
        rows = rows,
        blocks = blocks_table(data.blocks, false),
    );
    page(&format!("{} · tbg solo pool", user.address), &body)
}

/// The last 30 days, when the collector's database is there.
fn days_table(days: &[crate::pg::Day]) -> String {
    if days.is_empty() {
        return String::new();
    }
    let rows: String = days
        .iter()
        .map(|d| {
            format!(
                "<tr><th scope=\"row\">{day}</th><td>{accepted}</td><td>{rejects}</td><td>{best}</td></tr>",
                day = escape(&d.day),
                accepted = d.accepted,
                rejects = format::percent(d.rejected.max(0) as u64, (d.accepted + d.rejected).max(0) as u64),
                best = d.best.map_or("–".to_owned(), format::difficulty),
            )
        })
        .collect();
    format!(
        concat!(
            "<h2>Last 30 days</h2><div class=\"scroll\"><table id=\"days\"><caption>Per UTC day, from the pool's database</caption>",
            "<thead><tr><th scope=\"col\">Day</th><th scope=\"col\">Shares accepted</th><th scope=\"col\">Rejects</th><th scope=\"col\">Best share</th></tr></thead>",
            "<tbody>{rows}</tbody></table></div>"
        ),
        rows = rows
    )
}

/// An address the pool has not seen (or no longer remembers).
pub fn unknown_address_page(address: &str) -> String {
    page(
        "Unknown address · tbg solo pool",
        &format!(
            "<h1>No miner seen with this address</h1><p>The pool has no worker for <span class=\"hash\">{}</span> since it started. Point your miner at the pool with this address as its username (<code>address.worker</code>), then come back after its first share.</p>",
            escape(address)
        ),
    )
}
