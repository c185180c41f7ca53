//! Binding the listener and announcing where it is.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

/// Binds `host:port` (port 0 picks a free one) and prints
/// `listening on http://ADDR` on stdout, which the launcher and the tests read
/// to learn the port.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    Ok((listener, addr))
}
