//! What vigil's integration tests (`tests/common`) and its benchmarks (`vigil-bench`) share,
//! so that each piece of it is written once: free loopback ports, a private `redis-server`
//! that can be killed and started again on its port, the real `vigil` binary started with
//! only the settings it is given and stopped as a supervisor stops it, and scratch
//! PostgreSQL databases.
//!
//! Nothing here panics or asserts: every failure is an error with context, for the caller
//! to report. The benchmark prints it; `tests/common` fails the test with it. This crate is
//! never a dependency of the service itself.

pub mod launch;
pub mod port;
pub mod postgres;
pub mod process;
pub mod redis_server;

pub use port::free_port;
