//! Tagged frontend messages: `protocol::next_frame` over the input (at once
//! and fed in chunks), and `query_text`, `parse_message`, `bind_names` on
//! every frame's body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zoneguard_fuzz::frames(data);
});
