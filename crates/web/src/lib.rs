//! The pool's public dashboard, served by the pool itself on `web.bind`:
//! `/` (the pool: miners, hashrate, network difficulty and height, blocks
//! found with their status) and `/address/<address>` (its workers, their
//! hashrates, last share, reject rate and best share, a chart of the last
//! day, its blocks). Server-rendered HTML with an inline SVG chart: no
//! script, no CDN, no build step; works on the embedded default with no
//! database, from the pool's own stats.
//!
//! Apart from `/metrics` and the status API: the dashboard shows no node
//! URL, error or other operator detail, so it can face the internet while
//! the operator endpoints stay on loopback.
#![forbid(unsafe_code)]

pub mod best;
pub mod chart;
pub mod format;
pub mod history;
pub mod pg;
pub mod render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tbg_pool::PoolView;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use history::History;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen for the dashboard on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the dashboard shows and how often it samples the chart.
#[derive(Clone)]
pub struct WebSources {
    pub pool: PoolView,
    /// The network's name, shown beside the pool's title.
    pub network: String,
    /// One chart point per this (5 min: 288 points a day).
    pub sample_interval: Duration,
    /// Where the week's and all-time best shares are kept across restarts
    /// (`None`: in memory only).
    pub state_file: Option<PathBuf>,
    /// The collector's PostgreSQL (`collector.postgres_url`): longer
    /// history for the address pages (`None`: the pool's own figures only).
    pub postgres: Option<String>,
}

struct AppState {
    sources: WebSources,
    history: History,
    best: best::BestRecords,
    pg: Option<pg::PgAggregates>,
}

/// The running dashboard: its HTTP server and its chart sampler.
pub struct WebServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WebServer {
    /// Serves the dashboard on `bind` (`host:port`, port 0 allowed).
    pub async fn start(bind: &str, sources: WebSources) -> Result<WebServer, WebError> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| WebError::Bind {
                addr: bind.to_owned(),
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let best = load_best(sources.state_file.clone()).await;
        let state = Arc::new(AppState {
            history: History::new(Duration::from_secs(86_400), sources.sample_interval),
            best,
            pg: sources.postgres.clone().map(pg::PgAggregates::new),
            sources,
        });
        let (stop, stop_rx) = watch::channel(false);
        let sampler = tokio::spawn(sample(state.clone(), stop_rx.clone()));
        let app = router(state);
        let mut server_stop = stop_rx;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "dashboard server stopped");
            }
        });
        tracing::info!(%local_addr, "dashboard listening");
        Ok(WebServer {
            local_addr,
            stop,
            tasks: vec![sampler, server],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits (at most 2 s) for open requests.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// The best-share record of an earlier run; a file that does not read is
/// moved aside (`.bad`) with a warning: the dashboard starts afresh rather
/// than keep the pool from starting.
async fn load_best(path: Option<PathBuf>) -> best::BestRecords {
    let Some(path) = path else {
        return best::BestRecords::default();
    };
    let loaded = tokio::task::spawn_blocking(move || match best::BestRecords::load(&path) {
        Ok(records) => records,
        Err(error) => {
            let aside = path.with_extension("bad");
            let moved = std::fs::rename(&path, &aside).is_ok();
            tracing::warn!(%error, moved_to = %aside.display(), moved,
                "dashboard: best shares start afresh");
            best::BestRecords::default()
        }
    })
    .await;
    loaded.unwrap_or_default()
}

async fn sample(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(state.history.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The select ends before the save's await (the stop's wait holds a
        // guard that must not cross an await).
        let stopped = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => true,
            _ = ticker.tick() => false,
        };
        if stopped {
            break;
        }
        let users = state.sources.pool.stats().users(Instant::now());
        state.history.sample(&users);
        state.best.observe(&users, tbg_pool::stats::unix_day());
        save_best(&state).await;
    }
    save_best(&state).await;
}

/// Writes the best-share record; a failure is logged, the pages go on.
async fn save_best(state: &Arc<AppState>) {
    let Some(path) = state.sources.state_file.clone() else {
        return;
    };
    let state = state.clone();
    let saved = tokio::task::spawn_blocking(move || state.best.save(&path)).await;
    if let Ok(Err(error)) = saved {
        tracing::warn!(%error, "dashboard: best shares not saved");
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(pool_page))
        .route("/address", get(address_lookup))
        .route("/address/:address", get(address_page))
        .route("/favicon.ico", get(favicon))
        .with_state(state)
}

fn html(body: String) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // Nothing but our own inline style: no script may run, no
            // resource may load from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(body),
    )
        .into_response()
}

async fn pool_page(State(state): State<Arc<AppState>>) -> Response {
    let pool = &state.sources.pool;
    let users = pool.stats().users(Instant::now());
    let status = pool.status();
    let blocks = pool.blocks();
    let history = state.history.pool();
    html(render::pool_page(&render::PoolPage {
        status: &status,
        hashrate_5m: users.iter().map(|u| u.hashrate_5m).sum(),
        hashrate_1h: users.iter().map(|u| u.hashrate_1h).sum(),
        users_connected: users.iter().filter(|u| u.workers_connected > 0).count(),
        workers_connected: users.iter().map(|u| u64::from(u.workers_connected)).sum(),
        blocks: &blocks,
        history: &history,
        span: state.history.span_label(history.len()),
        network: &state.sources.network,
    }))
}

#[derive(serde::Deserialize)]
struct Lookup {
    address: String,
}

/// The header's search form: `/address?address=...` to the address's page.
async fn address_lookup(Query(lookup): Query<Lookup>) -> Response {
    let address = lookup.address.trim();
    // Only what an address can hold goes into the Location header.
    if address.is_empty() || !address.chars().all(|c| c.is_ascii_alphanumeric()) {
        return (
            StatusCode::BAD_REQUEST,
            html(render::unknown_address_page(address)),
        )
            .into_response();
    }
    Redirect::to(&format!("/address/{address}")).into_response()
}

async fn address_page(State(state): State<Arc<AppState>>, Path(address): Path<String>) -> Response {
    let pool = &state.sources.pool;
    let live = pool.stats().user(&address, Instant::now());
    let history = match &state.pg {
        Some(pg) => pg.address(&address).await.unwrap_or_default(),
        None => pg::AddressHistory::default(),
    };
    // Known to the pool now, or to the database from before.
    let user = match live {
        Some(user) => user,
        // Known to the database only (after a restart, or mined in
        // another region): no worker now.
        None if !history.is_empty() => tbg_pool::UserSnapshot::empty(&address),
        None => {
            return (
                StatusCode::NOT_FOUND,
                html(render::unknown_address_page(&address)),
            )
                .into_response()
        }
    };
    let blocks: Vec<_> = pool
        .blocks()
        .into_iter()
        .filter(|b| b.user == address)
        .collect();
    let chart = state.history.address(&address);
    let span = state.history.span_label(chart.as_ref().map_or(0, Vec::len));
    let mut best = state.best.of(&user, tbg_pool::stats::unix_day());
    best.week = best.week.max(history.week_best.unwrap_or(0.0));
    best.all_time = best.all_time.max(history.all_time_best.unwrap_or(0.0));
    html(render::address_page(&render::AddressPage {
        user: &user,
        best,
        blocks: &blocks,
        history: chart.as_deref(),
        span,
        days: &history.days,
    }))
}

/// A pickaxe-free favicon: an empty answer, so browsers log no 404.
async fn favicon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "max-age=86400")],
    )
        .into_response()
}
