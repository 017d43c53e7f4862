//! Graceful shutdown: the signal that starts it and the bounded wait that
//! ends it.

use std::time::Duration;

use tokio::task::JoinSet;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Waits for every task in `tasks` up to `deadline`, then aborts the rest and
/// reports how many had to be abandoned.
pub async fn drain(tasks: &mut JoinSet<()>, deadline: Duration) -> usize {
    let finished = tokio::time::timeout(deadline, async {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result
                && e.is_panic()
            {
                tracing::error!(error = %e, "a task panicked during shutdown");
            }
        }
    })
    .await;
    if finished.is_ok() {
        return 0;
    }
    let left = tasks.len();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    left
}
