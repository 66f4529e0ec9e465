//! zoneguard: a PostgreSQL wire-protocol guard.
pub mod classify;
