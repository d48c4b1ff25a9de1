//! Stopping without cutting off a connection accepted last.
//!
//! When a pingora service stops accepting, it at once drops every connection still waiting
//! for its first (or next keep-alive) request. A client that has just connected — its
//! request on its way, accepted a moment before the edge stopped — would see its
//! connection closed without an answer; in an upgrade that is a refused request although a
//! new edge was ready. [`Settled`] wraps the edge's application so that this happens only
//! [`SETTLE`](crate::SETTLE) after the edge stopped accepting: requests that arrive in that
//! time are served (pingora answers them without keep-alive, as the service is shutting
//! down), and only connections that stayed silent are then closed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// `app`, whose idle connections are closed `settle` after it stops accepting.
pub struct Settled<A> {
    app: Arc<A>,
    settle: Duration,
}

impl<A> Settled<A> {
    /// Wraps `app`.
    pub fn new(app: A, settle: Duration) -> Self {
        Self {
            app: Arc::new(app),
            settle,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Settled<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.app.process_new(session, shutdown).await
    }

    /// Called once the service stopped accepting: waits, then lets `app` close what is idle.
    async fn cleanup(&self) {
        tokio::time::sleep(self.settle).await;
        self.app.cleanup().await;
    }
}
