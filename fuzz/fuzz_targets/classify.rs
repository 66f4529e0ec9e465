//! Statement text as raw bytes (any encoding): `classify::classify` on its
//! lossy UTF-8 reading, `reading::scan`, `reading::ambiguous_mid_batch`,
//! `cache::normalize`, the R1 invariant of `reading::depends_on_settings`,
//! and a cache shared across the run that must agree with `classify`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zoneguard_fuzz::CacheCheck;

static CACHE: OnceLock<CacheCheck> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    zoneguard_fuzz::classify(data, Some(CACHE.get_or_init(CacheCheck::default)));
});
