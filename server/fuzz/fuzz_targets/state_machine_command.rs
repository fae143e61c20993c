//! AFL++ harness for the `state_machine_command` target; the body and its properties are
//! `titan_server::fuzzing::state_machine_command`. Built and run by `scripts/fuzz.sh`; run
//! outside afl-fuzz it reads one input from stdin (to reproduce a crash).

use titan_server::fuzzing::{self, CappedAlloc};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        fuzzing::state_machine_command(data);
    });
}
