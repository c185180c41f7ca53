//! A dedicated connection LISTENing for the other replicas' wake-ups.
//!
//! A notification is a hint, never the only signal: one sent while this
//! connection was down is lost, and transaction-mode poolers do not pass
//! them at all. So the claim and the result-watching loops also poll; a
//! notification only makes them look sooner. After every reconnect both are
//! woken, in case something was missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;

use super::PgError;
use super::connect::{Target, tls};

/// Who to wake for which channel.
#[derive(Clone, Default)]
pub struct Wakeups {
    /// `tasks_queued`: tasks may be waiting to be claimed.
    pub queued: Arc<Notify>,
    /// `tasks_finished`: results were recorded.
    pub finished: Arc<Notify>,
    /// `modules_changed`: a module was stored through some replica.
    pub modules: Arc<Notify>,
    /// `tasks_cancel`: some replica asked to cancel tasks a replica holds.
    pub cancel: Arc<Notify>,
}

/// Tells every replica that results were recorded (`tasks_finished`).
pub async fn notify_finished(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify('tasks_finished', '')", &[])
        .await
        .map(drop)
}

/// The tasks `rows` hold, just finished: every replica is told first when
/// there are any.
pub async fn finished_tasks(
    client: &tokio_postgres::Client,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<crate::task::Task>, PgError> {
    if !rows.is_empty() {
        notify_finished(client).await?;
    }
    Ok(super::rows::to_tasks(rows)?)
}

/// LISTENs until the process ends, reconnecting with backoff.
pub async fn listen_forever(target: Target, wake: Wakeups) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&target, &wake).await {
            Ok(()) => tracing::warn!("the LISTEN connection closed; reconnecting"),
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed; polling meanwhile")
            }
        }
        wake.queued.notify_one();
        wake.finished.notify_one();
        wake.modules.notify_one();
        wake.cancel.notify_one();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen(target: &Target, wake: &Wakeups) -> Result<(), PgError> {
    let tls = tls().map_err(|e| PgError::Commit(format!("{e:#}")))?;
    let (client, mut connection) = target.config().connect(tls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // The connection only makes progress while polled: it runs on its own
    // task and hands the notifications over.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.channel().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    });
    client
        .batch_execute(
            "LISTEN tasks_queued; LISTEN tasks_finished; LISTEN modules_changed; LISTEN tasks_cancel",
        )
        .await?;
    tracing::debug!("listening for the other replicas' wake-ups");
    wake.queued.notify_one();
    wake.finished.notify_one();
    wake.modules.notify_one();
    wake.cancel.notify_one();
    while let Some(channel) = rx.recv().await {
        match channel.as_str() {
            "tasks_queued" => wake.queued.notify_one(),
            "tasks_finished" => wake.finished.notify_one(),
            "modules_changed" => wake.modules.notify_one(),
            "tasks_cancel" => wake.cancel.notify_one(),
            _ => {}
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}
