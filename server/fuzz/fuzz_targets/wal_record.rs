//! Fuzzes the WAL record decoder: any bytes must decode or fail cleanly,
//! and a decoded record must re-encode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use titan_server::storage::wal_record::decode_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok((record, used)) = decode_frame(data, 1 << 20) {
        let mut again = Vec::new();
        record.encode_into(&mut again);
        assert_eq!(&again[..], &data[..used]);
    }
});
