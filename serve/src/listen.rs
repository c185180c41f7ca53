//! Binding the listener and announcing where it is.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

const PREFIX: &str = "listening on http://";

/// Binds `host:port` (port 0 picks a free one) and announces the address on
/// stdout, which the launcher and the tests read to learn the port: the line
/// `listening on http://ADDR`, or with `LOG_FORMAT=json` the same message as
/// one JSON object shaped like the other log lines (plus a `url` field).
/// [`announced_addr`] reads either.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    let json = crate::logging::format() == crate::logging::LogFormat::Json;
    println!("{}", announcement(addr, json));
    Ok((listener, addr))
}

fn announcement(addr: SocketAddr, json: bool) -> String {
    let message = format!("{PREFIX}{addr}");
    if !json {
        return message;
    }
    let mut timestamp = String::new();
    // The formatter of the JSON log lines; writing to a String cannot fail.
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    serde_json::json!({
        "timestamp": timestamp,
        "level": "INFO",
        "fields": {"message": message, "url": format!("http://{addr}")},
        "target": module_path!(),
    })
    .to_string()
}

/// The address in an announcement line printed by [`bind`], text or JSON.
pub fn announced_addr(line: &str) -> Option<SocketAddr> {
    let line = line.trim();
    if let Some(addr) = line.strip_prefix(PREFIX) {
        return addr.parse().ok();
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value["fields"]["url"]
        .as_str()?
        .strip_prefix("http://")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_announcements_name_the_address() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let text = announcement(addr, false);
        assert_eq!(text, "listening on http://127.0.0.1:4321");
        let json = announcement(addr, true);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["level"], "INFO");
        assert_eq!(
            value["fields"]["message"],
            "listening on http://127.0.0.1:4321"
        );
        assert!(value["timestamp"].as_str().is_some_and(|t| t.len() > 10));
        assert_eq!(announced_addr(&text), Some(addr));
        assert_eq!(announced_addr(&json), Some(addr));
        assert_eq!(announced_addr("listening on nothing"), None);
        assert_eq!(announced_addr(r#"{"fields":{"message":"hello"}}"#), None);
    }
}
