//! The edge proxy as a client sees it: a real control plane and edges in-process on port
//! 0, with stand-ins for region agents (from the test kit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod cli;
mod compatible;
mod instances;
mod quotas;
mod resend;
mod routing;
mod serving;
mod slow_clients;
mod support;
mod upgrade;
