//! Meridian's edge proxy (DESIGN.md §1, §3, §4, §7).
//!
//! Every client request arrives here. The edge authenticates the API key, applies the
//! tenant's quotas, resolves the client's location with a MaxMind database, asks the `policy`
//! crate for the ordered candidate regions and proxies to the first, failing over only to
//! regions inside the tenant's residency. It runs on pingora.
//!
//! This crate is a skeleton: the proxy service and the `edge-proxy` binary land here next.
