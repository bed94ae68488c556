//! Forwarding of the audit log to a syslog receiver over TCP (RFC 5424
//! messages, RFC 6587 octet-counting framing). Each chain is forwarded from
//! a cursor kept in the store, so nothing is skipped across restarts and a
//! receiver that was down gets what it missed.

use std::time::Duration;

use strongroom_core::clock::SharedClock;
use strongroom_core::export::Format;
use strongroom_store::Store;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// This machine's name, for syslog headers.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "strongroom".into())
}

pub fn start(store: Store, target: String, clock: SharedClock) {
    tokio::spawn(run(store, target, clock));
}

async fn run(store: Store, target: String, _clock: SharedClock) {
    let host = host_name();
    let mut conn: Option<TcpStream> = None;
    let mut backoff = 1u64;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if conn.is_none() {
            match TcpStream::connect(&target).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff = 1;
                }
                Err(e) => {
                    tracing::warn!(%target, error = %e, "syslog receiver unreachable; retrying in {backoff} s");
                    tokio::time::sleep(Duration::from_secs(backoff)).await;
                    backoff = (backoff * 2).min(60);
                    continue;
                }
            }
        }
        if let Err(e) = forward_all(&store, &host, conn.as_mut()).await {
            tracing::warn!(%target, error = %e, "syslog forwarding interrupted; reconnecting");
            conn = None;
        }
    }
}

async fn forward_all(
    store: &Store,
    host: &str,
    conn: Option<&mut TcpStream>,
) -> anyhow::Result<()> {
    let Some(conn) = conn else { return Ok(()) };
    for chain in store.audit_chains().await? {
        let mut cursor = store.forward_cursor(chain).await?;
        let code = store
            .company_code(strongroom_core::CompanyId(chain))
            .await?;
        loop {
            let page = store.audit_after(chain, cursor, 500).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let mut buf = Vec::new();
            for e in &page {
                let msg = crate::audit::export_line(Format::Syslog, code.as_deref(), e, host);
                buf.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
            }
            conn.write_all(&buf).await?;
            conn.flush().await?;
            store.set_forward_cursor(chain, last).await?;
            cursor = last;
        }
    }
    Ok(())
}
