//! The typed client that edges and region agents use to talk to the control plane.
//!
//! Edges and agents never talk to the store directly; they call the control plane's HTTP
//! API. [`wire`] holds the JSON bodies of that API, shared with the server.

pub mod wire;
