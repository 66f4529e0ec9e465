//! The seed's checkout flow (DMS section 3), as an application would write
//! it against zoneguard: read the kill switch through the normal connection,
//! then take the new commerce path (bundle price from commission_rules,
//! writes to the new zone) or the legacy one (normal price, writes to the
//! old transactions table); both then call the payment gateway.

use tokio_postgres::{error::SqlState, Client};

/// Normal (legacy) prices, in rupiah.
pub fn list_price(product: &str) -> Option<i64> {
    match product {
        "TALENT-BASIC" => Some(150_000),
        "TALENT-PRO" => Some(450_000),
        "TALENT-BUNDLE" => Some(700_000),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutPath {
    NewCommerce,
    Legacy,
}

#[derive(Debug, Clone)]
pub struct Receipt {
    pub path: CheckoutPath,
    pub price: i64,
    /// entitlements.id (new path) or transactions.id (legacy path).
    pub order_id: i64,
    pub payment_ref: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("unknown product {0}")]
    UnknownProduct(String),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Reads `zoneguard.enable_new_commerce` through the guard.
pub async fn new_commerce_enabled(c: &Client) -> Result<bool, tokio_postgres::Error> {
    let rows = c.simple_query("SHOW zoneguard.enable_new_commerce").await?;
    Ok(rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
        _ => false,
    }))
}

/// One checkout. If the switch flips between reading it and writing (the
/// guard then rejects the write with 42501), it reads the switch again and
/// takes the other path once.
pub async fn checkout(c: &Client, user_id: i64, product: &str) -> Result<Receipt, CheckoutError> {
    let mut attempt = 0;
    loop {
        let path = if new_commerce_enabled(c).await? {
            CheckoutPath::NewCommerce
        } else {
            CheckoutPath::Legacy
        };
        let result = match path {
            CheckoutPath::NewCommerce => new_commerce_controller(c, user_id, product).await,
            CheckoutPath::Legacy => legacy_controller(c, user_id, product).await,
        };
        match result {
            Err(CheckoutError::Db(e))
                if attempt == 0 && e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                attempt += 1;
                continue;
            }
            Err(e) => return Err(e),
            Ok((price, order_id)) => {
                return Ok(Receipt {
                    path,
                    price,
                    order_id,
                    payment_ref: payment_gateway(price, order_id),
                })
            }
        }
    }
}

/// New path: bundle price from commission_rules.logic_json, an entitlement
/// in the new zone.
async fn new_commerce_controller(
    c: &Client,
    user_id: i64,
    product: &str,
) -> Result<(i64, i64), CheckoutError> {
    let base = list_price(product).ok_or_else(|| CheckoutError::UnknownProduct(product.into()))?;
    let discount: i32 = c
        .query_opt(
            "SELECT COALESCE((logic_json->>'discount_pct')::int, 0) FROM commission_rules \
             WHERE logic_json->>'bundle' = $1 ORDER BY id LIMIT 1",
            &[&product],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let price = base * (100 - discount as i64) / 100;
    let id: i64 = c
        .query_one(
            "INSERT INTO entitlements (user_id, sku, status) VALUES ($1, $2, 'ACTIVE') RETURNING id",
            &[&user_id, &product],
        )
        .await?
        .get(0);
    Ok((price, id))
}

/// Legacy path: normal price, an order in the old transactions table.
async fn legacy_controller(
    c: &Client,
    user_id: i64,
    product: &str,
) -> Result<(i64, i64), CheckoutError> {
    let price = list_price(product).ok_or_else(|| CheckoutError::UnknownProduct(product.into()))?;
    let id: i64 = c
        .query_one(
            "INSERT INTO transactions (user_id, product_id, status, amount, paid_at) \
             VALUES ($1, $2, 'PAID', $3::int8, now()) RETURNING id",
            &[&user_id, &product, &price],
        )
        .await?
        .get(0);
    Ok((price, id))
}

/// The payment gateway stand-in: both paths end here.
pub fn payment_gateway(amount: i64, order_id: i64) -> String {
    format!("PAY-{order_id}-{amount}")
}
