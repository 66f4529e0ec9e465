//! The audit trail survives log rotation (issue 11, one part): a file
//! renamed away (logrotate's default), removed, or truncated in place
//! (copytruncate) does not lose a record; the trail goes on at the path.

mod common;

use common::*;

#[tokio::test]
async fn the_audit_log_survives_rotation() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let reject = |id: i64| format!("UPDATE users SET email = email WHERE id = {id}");
    let records = |p: &std::path::Path| read_jsonl(p).len();

    assert_eq!(sqlstate(app.batch_execute(&reject(1)).await), "42501");
    assert_eq!(records(&g.audit_path), 1);

    // Renamed away (logrotate's default, with or without `create`).
    let rotated = g.audit_path.with_extension("jsonl.1");
    std::fs::rename(&g.audit_path, &rotated).unwrap();
    assert_eq!(sqlstate(app.batch_execute(&reject(2)).await), "42501");
    assert_eq!(records(&rotated), 1, "the rotated file keeps what it had");
    assert_eq!(records(&g.audit_path), 1, "the next record is at the path");
    assert!(g.audit()[0]["statement"]
        .as_str()
        .unwrap()
        .contains("id = 2"));

    // Renamed, and a new empty file created by the rotator.
    std::fs::rename(&g.audit_path, g.audit_path.with_extension("jsonl.2")).unwrap();
    std::fs::write(&g.audit_path, b"").unwrap();
    assert_eq!(sqlstate(app.batch_execute(&reject(3)).await), "42501");
    assert_eq!(records(&g.audit_path), 1);

    // Removed.
    std::fs::remove_file(&g.audit_path).unwrap();
    assert_eq!(sqlstate(app.batch_execute(&reject(4)).await), "42501");
    assert_eq!(records(&g.audit_path), 1);

    // Truncated in place (copytruncate): appended from the start.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&g.audit_path)
        .unwrap();
    assert_eq!(sqlstate(app.batch_execute(&reject(5)).await), "42501");
    let all = g.audit();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0]["statement"].as_str().unwrap().contains("id = 5"));

    // Its whole directory deleted: made again, and the record is there
    // (not in an unlinked file).
    let dir = g.audit_path.parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(sqlstate(app.batch_execute(&reject(6)).await), "42501");
    let all = g.audit();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0]["statement"].as_str().unwrap().contains("id = 6"));
}

#[tokio::test]
async fn sighup_or_reload_reopens_the_audit_log_at_once() {
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let console = admin(&g).await;
    console.simple_query("SHOW MODE").await.unwrap();
    let rotated = g.audit_path.with_extension("jsonl.1");
    std::fs::rename(&g.audit_path, &rotated).unwrap();
    assert!(!g.audit_path.exists());
    // logrotate's postrotate: kill -HUP (here the console's RELOAD, the
    // same path). The new file is there before any record is written.
    console.simple_query("RELOAD").await.unwrap();
    assert!(g.audit_path.exists(), "reopened at the path");
    // The reload's own record goes to the new file, not the rotated one.
    assert!(g.audit().iter().any(|r| r["event"] == "policy_reloaded"));
    assert!(read_jsonl(&rotated)
        .iter()
        .all(|r| r["event"] != "policy_reloaded"));
}
