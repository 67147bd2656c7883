//! Shared by the collector benches: where PostgreSQL comes from.

// Each bench uses a part of this module.
#![allow(dead_code)]

use tbg_testkit::PgServer;

/// The PostgreSQL a bench writes to: a private server (fsync=off, as the
/// tests use) or, with `TBG_BENCH_PG_ADMIN` set to a conninfo of a real
/// server (e.g. "host=127.0.0.1 port=5432 dbname=test"), a fresh database
/// created there and dropped at the end.
pub enum BenchPg {
    Private(PgServer),
    Shared {
        admin: String,
        database: String,
        conninfo: String,
    },
}

impl BenchPg {
    pub async fn start() -> BenchPg {
        let Ok(admin) = std::env::var("TBG_BENCH_PG_ADMIN") else {
            return BenchPg::Private(PgServer::start());
        };
        let database = format!("tbg_collector_bench_{}", std::process::id());
        let client = tbg_collector::postgres::connect(&admin)
            .await
            .expect("connect to TBG_BENCH_PG_ADMIN");
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create the bench database");
        let conninfo = format!("{admin} dbname={database}");
        BenchPg::Shared {
            admin,
            database,
            conninfo,
        }
    }

    pub fn conninfo(&self) -> String {
        match self {
            BenchPg::Private(server) => server.conninfo(),
            BenchPg::Shared { conninfo, .. } => conninfo.clone(),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            BenchPg::Private(_) => "private PostgreSQL (fsync=off, synchronous_commit=off)",
            BenchPg::Shared { .. } => "shared PostgreSQL from TBG_BENCH_PG_ADMIN",
        }
    }

    pub async fn stop(self) {
        if let BenchPg::Shared {
            admin, database, ..
        } = self
        {
            let client = tbg_collector::postgres::connect(&admin)
                .await
                .expect("connect to TBG_BENCH_PG_ADMIN");
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .await
                .expect("drop the bench database");
        }
    }
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system, in clock ticks of 1/100 s) of the processes a
/// bench run involves, read from /proc: the throughput of three processes
/// sharing 2 cores with other work is best compared by CPU per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    /// This process: the collector (and the bench's light polling).
    pub collector: u64,
    /// PostgreSQL: the private server's postmaster and every process it
    /// started (including exited ones); on a shared server, the backends
    /// connected to the bench database only.
    pub postgres: u64,
    pub redis: u64,
}

impl CpuTicks {
    pub fn since(self, start: CpuTicks) -> CpuTicks {
        CpuTicks {
            collector: self.collector.saturating_sub(start.collector),
            postgres: self.postgres.saturating_sub(start.postgres),
            redis: self.redis.saturating_sub(start.redis),
        }
    }

    /// "collector 12.3 µs, postgres 20.1 µs, redis 9.0 µs per event".
    pub fn per_event(self, events: u64) -> String {
        let micros = |ticks: u64| ticks as f64 * 10_000.0 / events.max(1) as f64;
        format!(
            "cpu per event: collector {:.1} us, postgres {:.1} us, redis {:.1} us, total {:.1} us",
            micros(self.collector),
            micros(self.postgres),
            micros(self.redis),
            micros(self.collector + self.postgres + self.redis),
        )
    }
}

struct ProcStat {
    pid: u32,
    ppid: u32,
    own: u64,
    reaped_children: u64,
    cmdline: String,
}

fn processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which may contain spaces.
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(1)
                .map(|field| field.parse().unwrap_or(0))
                .collect();
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            Some(ProcStat {
                pid,
                ppid: *fields.first()? as u32,
                own: fields.get(10)? + fields.get(11)?,
                reaped_children: fields.get(12)? + fields.get(13)?,
                cmdline,
            })
        })
        .collect()
}

fn conninfo_value<'a>(conninfo: &'a str, key: &str) -> Option<&'a str> {
    conninfo
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| *name == key)
        .map(|(_, value)| value)
        .next_back()
}

impl BenchPg {
    /// Reads the CPU counters now; `redis_url` = the bench's Redis, if any.
    pub fn cpu_ticks(&self, redis_url: Option<&str>) -> CpuTicks {
        let all = processes();
        let own = std::process::id();
        let collector = all.iter().find(|p| p.pid == own).map_or(0, |p| p.own);
        let postgres = match self {
            BenchPg::Private(_) => {
                let conninfo = self.conninfo();
                let port = conninfo_value(&conninfo, "port").unwrap_or("");
                let flag = format!(" -p {port} ");
                all.iter()
                    .find(|p| p.cmdline.contains("postgres") && p.cmdline.contains(&flag))
                    .map_or(0, |postmaster| {
                        postmaster.own
                            + postmaster.reaped_children
                            + all
                                .iter()
                                .filter(|p| p.ppid == postmaster.pid)
                                .map(|p| p.own)
                                .sum::<u64>()
                    })
            }
            BenchPg::Shared { database, .. } => {
                let name = format!(" {database} ");
                all.iter()
                    .filter(|p| p.cmdline.starts_with("postgres: ") && p.cmdline.contains(&name))
                    .map(|p| p.own)
                    .sum()
            }
        };
        let redis = redis_url
            .and_then(|url| url.trim_end_matches('/').rsplit(':').next())
            .map_or(0, |port| {
                let address = format!(":{port}");
                all.iter()
                    .filter(|p| {
                        p.cmdline.starts_with("redis-server") && p.cmdline.contains(&address)
                    })
                    .map(|p| p.own)
                    .sum()
            });
        CpuTicks {
            collector,
            postgres,
            redis,
        }
    }
}
