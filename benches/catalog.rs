//! Catalog load benchmark: how long the guard takes to read a database's
//! catalog, and what it holds in memory, for a database with about 10,000
//! relations (tables with a serial key: table, sequence and index each),
//! plus the cost of resolving a name against it.
//!
//! `cargo bench --bench catalog`. Environment: BENCH_TABLES (default 3334,
//! i.e. ~10,000 relations), BENCH_LOADS (default 5).

use std::time::{Duration, Instant};

use zoneguard::catalog;
use zoneguard::classify::RelationName;
use zoneguard::cluster::Cluster;
use zoneguard::net::Endpoint;
use zoneguard::policy::CatalogSettings;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let tables = env_num("BENCH_TABLES", 3334);
    let loads = env_num("BENCH_LOADS", 5).max(1);
    eprintln!("starting a throwaway PostgreSQL ...");
    let cluster = Cluster::start().expect("start PostgreSQL");
    cluster.psql("postgres", "CREATE DATABASE big").unwrap();
    let started = Instant::now();
    cluster
        .psql(
            "big",
            &format!(
                "DO $$ BEGIN FOR i IN 1..{tables} LOOP \
                 EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, n int)', i); \
                 END LOOP; END $$"
            ),
        )
        .unwrap();
    eprintln!("created {tables} tables in {:?}", started.elapsed());
    let relations: usize = cluster
        .psql(
            "big",
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream = zoneguard::upstream::Upstream::plain(Endpoint::parse(&cluster.addr()).unwrap());
    let settings = CatalogSettings::default();
    let mut times = Vec::new();
    let rss_before = rss_kib();
    let mut kept = Vec::new();
    for _ in 0..loads {
        let c = rt
            .block_on(catalog::load(
                &upstream,
                &settings,
                "big",
                Duration::from_secs(10),
            ))
            .expect("load");
        times.push(c.loaded_in);
        kept.push(c);
    }
    let rss_after = rss_kib();
    times.sort();
    let c = &kept[0];
    // Resolving a name: the judge's lookup (all schemas) and on a path.
    let names: Vec<RelationName> = (1..=tables)
        .map(|i| RelationName::new(None, &format!("t{i}_id_seq")))
        .collect();
    let path = vec!["$user".to_string(), "public".to_string()];
    let t = Instant::now();
    let mut found = 0;
    for _ in 0..10 {
        for n in &names {
            for id in c.candidates_on_path(n, &path) {
                found += c.object(id).owner.is_some() as usize;
            }
        }
    }
    let per_lookup = t.elapsed() / (10 * names.len() as u32);
    assert_eq!(found, 10 * tables, "every sequence resolves to its table");
    println!();
    println!("| database | relations (user schemas) | objects held | load median | load min | load max | approx. heap | RSS growth per catalog | resolve a name |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {tables} tables | {relations} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.1} MiB | {:.2} µs |",
        c.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        c.approx_bytes() as f64 / (1 << 20) as f64,
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0 / loads as f64,
        per_lookup.as_secs_f64() * 1e6,
    );
}
