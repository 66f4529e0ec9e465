//! The untagged first packet of a connection: `protocol::read_first_packet`
//! over the input, read at once and a few bytes at a time.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::runtime::{Builder, Runtime};

/// One runtime for the whole run (building one per input would dominate).
static RT: OnceLock<Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let rt = RT.get_or_init(|| Builder::new_current_thread().build().unwrap());
    rt.block_on(zoneguard_fuzz::startup_async(data));
});
