//! The typed client that edges and region agents use to talk to the control plane.
//!
//! Edges and agents never talk to the store directly; they call the control plane's HTTP
//! API through this crate (snapshots and their changes for edges; registration, heartbeats
//! and usage for agents). This crate is a skeleton until the control plane's API lands.
