//! A deterministic discrete-event simulator of global traffic over Meridian's regions.
//!
//! It runs the `policy` crate's route decision unchanged, so what it shows is what the
//! edge does, at a scale no test machine can run: strategy comparisons and reservation
//! planning. This crate is a skeleton until the simulator lands.
