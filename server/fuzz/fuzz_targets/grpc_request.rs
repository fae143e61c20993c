//! AFL++ harness for the `grpc_request` target; the body and its properties are
//! `titan_server::fuzzing::grpc_request`. Built and run by `scripts/fuzz.sh`; run
//! outside afl-fuzz it reads one input from stdin (to reproduce a crash).

use titan_server::fuzzing::{self, CappedAlloc};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzzing::grpc_request(data);
    });
}
