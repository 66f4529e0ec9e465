//! zoneguard: a PostgreSQL wire-protocol guard that keeps legacy tables
//! read-only for new applications, at the network edge.
//!
//! The data's trip, one module per stage: [`server`] accepts ([`admission`]
//! decides what a connection may hold before it authenticates), [`session`]
//! relays one client, [`protocol`] frames messages, [`classify`] turns SQL
//! into facts, [`catalog`] says what the names denote, [`policy`] turns facts into a verdict, [`reject`] makes the
//! server fail a rejected statement as PostgreSQL would, [`audit`] records it.
//! [`guard`] is the state all sessions share; [`control`] reloads it and
//! flips switches, whose live positions [`state`] keeps in PostgreSQL.
pub mod admin;
pub mod admission;
pub mod audit;
pub mod backfill;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod checkout;
pub mod classify;
pub mod cluster;
pub mod control;
pub mod explain;
pub mod grants;
pub mod guard;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod protocol;
pub mod reject;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod upstream;
