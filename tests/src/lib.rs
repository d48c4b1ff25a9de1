//! Meridian's end-to-end scenarios.
//!
//! The harness here will start real processes or in-process components on free loopback
//! ports (etcd, the control plane, region agents, edges) and drive them as a client would.
//! It is a skeleton until the edge and the agents exist; the scenarios live in `tests/`.
