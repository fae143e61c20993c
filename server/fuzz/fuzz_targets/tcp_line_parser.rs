//! Fuzzes the plaintext protocol's framing (`check`) and parsing (`parse`)
//! with arbitrary bytes: no input may panic, `check` never claims more bytes
//! than exist, and a complete line never exceeds the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use titan_server::api::protocol::{Check, check, parse};

/// Small so oversize handling is exercised often.
const MAX_LINE_BYTES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Check::Complete { line_len, consumed } = check(rest, MAX_LINE_BYTES) {
        assert!(line_len <= MAX_LINE_BYTES && line_len < consumed && consumed <= rest.len());
        let _ = parse(&rest[..line_len]);
        rest = &rest[consumed..];
    }
    let _ = parse(data);
});
