//! The seed's checkout, run against zoneguard (e.g. the demo):
//!
//!     cargo run --example checkout -- postgresql://app@127.0.0.1:6432/shop [USER_ID] [PRODUCT] [COUNT]
//!
//! Each checkout reads `SHOW zoneguard.enable_new_commerce` through the
//! guard and takes the new commerce path (on) or the legacy one (off). Flip
//! the switch on the admin console while it runs:
//!
//!     psql postgresql://zgadmin:zgadmin@127.0.0.1:6432/zoneguard -c 'SET SWITCH enable_new_commerce = off'

use std::time::Duration;

use zoneguard::checkout::checkout;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgresql://app@127.0.0.1:6432/shop".into());
    let user: i64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let product = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "TALENT-BUNDLE".into());
    let count: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    for i in 0..count {
        let r = checkout(&client, user, &product).await?;
        println!(
            "checkout {i}: path={:?} price={} order={} payment={}",
            r.path, r.price, r.order_id, r.payment_ref
        );
        if count > 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
