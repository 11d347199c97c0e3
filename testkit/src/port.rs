//! Free TCP ports on loopback.

use anyhow::Context;

/// A free TCP port on loopback. It is free when asked (bound and released at once), so
/// another process may take it before the caller binds it: callers that start a server on it
/// check that the server answering there is theirs.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("cannot find a free port")?
        .port())
}
