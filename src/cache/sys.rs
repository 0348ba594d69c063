//! The cache's system calls — read-only memory maps and file locks — and the one test of
//! whether a process a file or directory is named after still runs, which the cache's
//! announcements and the runner's leftovers rely on. All of them are [`crate::sys`]'s; this
//! module names the ones the cache's users take from it.

pub(crate) use crate::sys::{alive, lock_exclusive, pid_name, try_lock_exclusive};
