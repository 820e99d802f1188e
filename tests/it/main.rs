//! The integration test binary: one module per area of the library.

mod bench_cmd;
mod cli;
mod cohorts;
mod compaction;
mod crash;
mod demo;
mod disk_full;
mod engine;
mod eval;
mod eval_props;
mod fast;
mod import;
mod layered;
mod log;
mod malformed;
mod matching;
mod query_safety;
mod segment_parse;
mod segments;
mod server;
mod slow_clients;
mod snapshot;
mod support;
mod users;
mod wire_safety;
mod workload;
