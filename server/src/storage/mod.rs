//! Durable storage: write-ahead log, snapshot files and the state machine.
