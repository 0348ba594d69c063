//! imgfs's integration tests, in one binary: the real CLI against real archives, daemons,
//! registries, FUSE mounts and sandboxes, each result compared with an independent truth (GNU
//! tar's extraction, umoci's unpacking, `docker export`, `docker run`, GNU coreutils).
//!
//! It takes root, the fixtures tests/fixtures/ builds (cached under `$IMGFS_FIXTURES`) and a
//! running dockerd; tests/run.sh sets all of that up. It runs under cargo-nextest, one process
//! per test, with tests/nextest.toml saying which tests must not run beside which; under
//! `cargo test` the same rules hold through the locks of [`common::lock`].

mod common;

mod cache;
mod cli;
mod compare_selftest;
mod confine;
mod containerd;
mod faults;
mod fuzz_regressions;
mod hostile;
mod inspect;
mod layers;
mod lazy;
mod mount;
mod registry_client;
mod run;
mod sources;
mod stress;
mod survive;
