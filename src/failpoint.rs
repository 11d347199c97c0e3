//! Failpoints: named places on an alert's path (see [`crate::intake`]) where a test stops
//! the real binary, to kill it there with SIGKILL. Compiled in only with the `failpoints` feature, which the tests
//! turn on; a release build has none.
//!
//! `VIGIL_FAILPOINT=NAME` (or `NAME:N`, the N-th time it is reached) makes the process
//! print `failpoint NAME reached` to standard error and stop that thread for good, so the
//! test can kill the process exactly there.

/// The environment variable naming the failpoint to stop at.
pub const FAILPOINT_ENV: &str = "VIGIL_FAILPOINT";

/// Passes the failpoint `name`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    /// The failpoint asked for, and on which pass.
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    /// Passes through the armed failpoint so far.
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let text = std::env::var(FAILPOINT_ENV).ok()?;
        match text.split_once(':') {
            Some((name, nth)) => Some((name.to_string(), nth.parse().ok()?)),
            None => Some((text, 1)),
        }
    });
    let Some((armed, nth)) = armed else {
        return;
    };
    if armed != name || PASSES.fetch_add(1, Ordering::AcqRel) + 1 != *nth {
        return;
    }
    eprintln!("failpoint {name} reached");
    loop {
        std::thread::park();
    }
}

/// Passes the failpoint `name`: nothing, without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
