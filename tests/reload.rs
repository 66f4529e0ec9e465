//! Safe reloads: a policy file caught in the middle of an in-place write,
//! or empty, is never installed; a completed write or an atomic rename is.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

fn reloads(g: &TestGuard, event: &str) -> usize {
    g.audit().iter().filter(|r| r["event"] == event).count()
}

#[tokio::test]
async fn a_half_written_policy_file_is_never_installed() {
    let db = fresh_db();
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let app = g.connect("app", &db).await;
    let checksum = g.guard.runtime.load().policy.checksum();

    // An in-place write (as a shell redirect or `cat >` does it): the file
    // is truncated, then written in pieces. What is there after the first
    // piece is valid TOML and a valid policy, without the new zone's rules
    // and without the switch.
    let edited = SHIPPED_POLICY.replace(
        "Legacy commerce system: shared with the old application",
        "Legacy commerce system (edited)",
    );
    let cut = edited.find("[zones.new]").unwrap();
    let (first, rest) = edited.split_at(cut);
    assert!(zoneguard::policy::parse(first, std::path::Path::new("p.toml")).is_ok());
    let mut f = std::fs::File::create(&g.policy_path).unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.sync_all().unwrap();
    // Longer than any poll or settle period: still the old policy.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(g.guard.runtime.load().policy.checksum(), checksum);
    assert_eq!(reloads(&g, "policy_reloaded"), 0);
    assert!(zoneguard::checkout::new_commerce_enabled(&app)
        .await
        .unwrap());
    app.batch_execute("INSERT INTO entitlements (user_id, sku, status) VALUES (1, 'W', 'ACTIVE')")
        .await
        .unwrap();

    // The write completes: installed, whole.
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);
    within(Duration::from_secs(3), || async {
        reloads(&g, "policy_reloaded") == 1
    })
    .await;
    let rt = g.guard.runtime.load();
    assert_ne!(rt.policy.checksum(), checksum);
    assert!(rt.policy.switches.contains_key("enable_new_commerce"));
    assert!(rt.policy.zones.iter().any(|z| z.name == "new"));
}

#[tokio::test]
async fn an_empty_policy_file_is_refused_and_an_atomic_rename_is_installed() {
    let g = TestGuard::start(SHIPPED_POLICY).await;
    let checksum = g.guard.runtime.load().policy.checksum();
    std::fs::File::create(&g.policy_path).unwrap();
    let refused = audit_event(&g, "reload_refused").await;
    assert_eq!(reloads(&g, "reload_refused"), 1);
    assert!(
        refused["error"].as_str().unwrap().contains("empty"),
        "{refused}"
    );
    assert_eq!(g.guard.runtime.load().policy.checksum(), checksum);

    // The safe way to deploy: write elsewhere, rename into place.
    let tmp = g.policy_path.with_extension("new");
    std::fs::write(
        &tmp,
        SHIPPED_POLICY.replace("default = true", "default = false"),
    )
    .unwrap();
    std::fs::rename(&tmp, &g.policy_path).unwrap();
    within(Duration::from_secs(3), || async {
        reloads(&g, "policy_reloaded") == 1
    })
    .await;
    assert!(!g.guard.runtime.load().switches["enable_new_commerce"]);
}
