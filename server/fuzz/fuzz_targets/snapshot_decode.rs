//! Fuzzes the snapshot decoder: any bytes must decode or fail cleanly,
//! without panicking or allocating beyond the configured limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use titan_server::storage::SnapshotLimits;
use titan_server::storage::snapshot_codec::decode_snapshot;

fuzz_target!(|data: &[u8]| {
    let limits = SnapshotLimits {
        max_header_bytes: 1 << 16,
        max_key_bytes: 1 << 16,
        max_value_bytes: 1 << 16,
    };
    let _ = decode_snapshot(&mut std::io::Cursor::new(data), &limits);
});
