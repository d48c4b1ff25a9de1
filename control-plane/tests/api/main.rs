//! The control plane's HTTP API, served in-process on port 0 against both store backends
//! (the embedded store in a temporary directory, and a real etcd).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod client;
mod edge_agent;
mod instances;
mod openapi;
mod reservations;
mod server;
mod skew;
mod usage;
mod usage_totals;

/// Runs every named scenario against both backends: `scenario(Backend) -> impl Future`.
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::server::Backend::Embedded).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::server::Backend::Etcd).await;
                }
            )*
        }
    };
}
