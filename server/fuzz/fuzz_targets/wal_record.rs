//! AFL++ harness for the `wal_record` target; the body and its properties are
//! `titan_server::fuzzing::wal_record`. Built and run by `scripts/fuzz.sh`; run
//! outside afl-fuzz it reads one input from stdin (to reproduce a crash).

use titan_server::fuzzing::{self, CappedAlloc};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzzing::wal_record(data);
    });
}
