//! What a watch yields: events in revision order, as a stream any backend can feed.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{Result, Revision};

/// One change to a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or overwritten.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
        /// The revision of this write.
        mod_revision: Revision,
    },
    /// The key was deleted (directly, or because its lease ended).
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } => key,
        }
    }

    /// The revision at which the event happened.
    pub fn mod_revision(&self) -> Revision {
        match self {
            Self::Put { mod_revision, .. } | Self::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The events of one watch, in revision order. It ends after an error item (such as
/// [`super::StoreError::Compacted`]) or when the store shuts down; dropping it cancels the
/// watch.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<WatchEvent>>,
}

impl WatchStream {
    /// How many events a backend may queue ahead of a slow reader.
    pub(crate) const BUFFER: usize = 256;

    /// A stream and the sender a backend feeds it through.
    pub(crate) fn channel() -> (mpsc::Sender<Result<WatchEvent>>, Self) {
        let (tx, events) = mpsc::channel(Self::BUFFER);
        (tx, Self { events })
    }

    /// The next event, or `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.events.recv().await
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}
