//! AFL++ harness for the `snapshot_decode` target; the body and its properties are
//! `titan_server::fuzzing::snapshot_decode`. Built and run by `scripts/fuzz.sh`; run
//! outside afl-fuzz it reads one input from stdin (to reproduce a crash).

use titan_server::fuzzing::{self, CappedAlloc};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzzing::snapshot_decode(data);
    });
}
