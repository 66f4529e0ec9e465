//! Real frameworks' migrations through the guard, with the shipped policy
//! plus its documented frameworks recipe only (no index or sequence names in
//! the policy): Alembic (SQLAlchemy) and Django, installed into a venv under
//! target/ (needs PyPI the first time). The Python side is in
//! tests/frameworks/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The shipped policy with its commented-out frameworks recipe turned on.
fn policy_with_recipe() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in SHIPPED_POLICY.lines() {
        if line.starts_with("# [zones.frameworks]") {
            inside = true;
        }
        if line.starts_with("# (The rules above") {
            inside = false;
        }
        match line.strip_prefix("# ") {
            Some(rest) if inside => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    assert!(
        out.contains("\n[zones.frameworks]\n"),
        "recipe not found in policy.toml"
    );
    out
}

/// A Python with Alembic, SQLAlchemy, psycopg and Django, in target/fwenv.
fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fwenv");
        let py = venv.join("bin/python");
        let ok = |py: &Path| {
            Command::new(py)
                .args(["-c", "import alembic, sqlalchemy, psycopg, django"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !ok(&py) {
            let st = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 -m venv");
            assert!(st.success(), "python3 -m venv failed");
            let st = Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "alembic>=1.13",
                    "sqlalchemy>=2",
                    "psycopg[binary]>=3.1",
                    "django>=5,<6",
                ])
                .status()
                .expect("pip install");
            assert!(st.success(), "pip install of the frameworks failed");
        }
        py
    })
    .clone()
}

fn run(script: &str, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks");
    let out = Command::new(python())
        .arg(dir.join(script))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The steps and their times, for --nocapture.
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alembic_upgrade_and_downgrade() {
    let db = fresh_db();
    let g = TestGuard::start(&policy_with_recipe()).await;
    let url = g.url("app", &db);
    let direct = cluster().url("postgres", &db);
    tokio::task::spawn_blocking(move || run("run_alembic.py", &[&url, &direct]))
        .await
        .unwrap();
    assert!(
        g.audit().is_empty(),
        "nothing should be rejected: {:?}",
        g.audit()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_migrate_loaddata_and_back_to_zero() {
    // Django creates the new zone's tables itself: only the legacy ones exist.
    let c = cluster();
    let db = format!("dj{}", std::process::id());
    c.psql("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    c.psql(&db, include_str!("../src/sql/legacy.sql")).unwrap();
    // Django's bulk statements run to megabytes: the shipped message
    // limit, not the harness's. And at most 64 KiB of SQL parsed at once:
    // the script's bulk_update (~0.5 MB of CASE arms, one per row and
    // field, and an IN list) is judged only because its arms are shortened
    // to one of each shape.
    let g = TestGuard::start_tuned(&policy_with_recipe(), &|s| {
        s.proxy.max_message_bytes = 64 << 20;
        s.proxy.max_statement_bytes = 64 << 10;
    })
    .await;
    let url = g.url("app", &db);
    let direct = c.url("postgres", &db);
    tokio::task::spawn_blocking(move || run("run_django.py", &[&url, &direct, "--expect-guard"]))
        .await
        .unwrap();
    // The only rejections are the legacy writes the script provokes.
    for r in g.audit() {
        let sql = r["statement"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            sql.contains("\"users\"") || sql.contains("\"transactions\""),
            "unexpected rejection: {r}"
        );
    }
}
