//! The server tests' view of `titan-testkit`: re-exports its API under the
//! names every `mod common; use common::...` in `server/tests/` uses, so the
//! process-level harness lives in one place (`testkit/`).
#![allow(unused_imports)] // Each test binary uses a different subset.

pub use titan_testkit::load;
pub use titan_testkit::proxy;
pub use titan_testkit::*;
