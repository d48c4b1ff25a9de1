//! Meridian's end-to-end harness: a whole stack on loopback, on free ports — the control
//! plane (on a real etcd, or the embedded store), region agents running the real
//! ESRGAN-slim model, and an edge — driven as a client would drive it. The control plane,
//! the edge, the waits and the weights come from the test kit.
//!
//! Every component is the real one, started in-process through the same `run` functions its
//! binary calls. Each agent runs on a runtime of its own so that a test can kill it outright
//! (its listener, heartbeats and connections vanish at once, as when its machine dies)
//! rather than only ask it to drain. The [`chaos`] harness goes further: its control plane and
//! agents are processes of their own, SIGKILLed and started again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod chaos;
mod stack;

pub use stack::{Answer, Backend, MODEL, POOL, RegionDef, Stack};
pub use testkit::{eventually, patience, within};

/// A small PNG (a gradient) as base64, the input of every ESRGAN job here.
pub fn small_png_base64(size: u32) -> String {
    use base64::Engine as _;
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, ((x + y) * 8) as u8])
    });
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.unwrap().as_millis()).unwrap()
}
