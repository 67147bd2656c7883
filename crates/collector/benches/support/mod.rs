//! Shared by the collector benches: where PostgreSQL comes from.

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
