//! vigil keeps a webhook-driven live trading service safe across crashes, outages and
//! restarts. See the README's Architecture section for the codemap.

pub mod broker;
pub mod cli;
pub mod coordination;
pub mod deployment;
pub mod diagnostic;
pub mod domain;
pub mod driver;
pub mod dry_run;
pub mod executor;
pub mod failpoint;
pub mod http;
pub mod intake;
pub mod logging;
pub mod machines;
pub mod notify;
pub mod policy;
pub mod positions;
pub mod recovery;
pub mod restarts;
pub mod shared;
pub mod shutdown;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod trading;
pub mod vocabulary;
