//! Overlapping tiles: how an image of any size goes through the network a bounded piece at a
//! time, with a result equal to running it whole.
//!
//! Every layer of the network is a stride-1 "same" convolution (or a pointwise operation), so
//! a low-resolution output pixel depends only on the input within the network's receptive
//! radius `R` ([`RdnConfig::receptive_radius`], the sum of `k / 2` over the convolutions on
//! the longest path; 10 pixels for the shipped models). A window of the image, run alone,
//! sees zero padding at its edges where the whole image has real pixels; that error moves
//! inwards by each layer's radius, so it reaches exactly `R` pixels into the window and no
//! further. Windows are therefore cut with a margin of `R` on every side that is not an
//! image edge (at an image edge the window's zero padding *is* the whole image's), and only
//! each window's core, the part at least `R` from a cut, is kept. The cores partition the
//! image. Cropping, not blending: with the full margin the cores are already exact (up to
//! float summation order), and blending would only mix exact pixels with wrong ones.
//!
//! All windows of one image have the same size (at most the window side: an axis is cut into
//! as few windows as cores of at most `window - 2 · margin` need, with cores of equal size,
//! so little is computed twice; a window that would run past an edge is slid back inside),
//! so any number of them stack into one `[N, 3, h, w]` tensor; [`Tiling::batch`] windows run per forward
//! pass, which bounds the activations held at once to one batch of windows.

use std::ops::Range;

use super::network::RdnConfig;

/// Default window side, in low-resolution pixels: at least 236 of every 256 are kept (the
/// rest is margin; a 1024-pixel side is cut into five windows of 225), and a window's
/// activations stay a few hundred megabytes.
pub const DEFAULT_WINDOW: usize = 256;
/// Default windows per forward pass (on a CPU, batching tiles measured no faster than one
/// at a time; a GPU is kept busier by more at once).
pub const DEFAULT_BATCH: usize = 2;

/// How an image is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Window side, in low-resolution pixels (at least `2 · margin + 1`).
    pub window: usize,
    /// Pixels cut off each window side that is not an image edge.
    pub margin: usize,
    /// Windows per forward pass (at least 1).
    pub batch: usize,
}

impl Tiling {
    /// Windows of [`DEFAULT_WINDOW`] with the network's receptive radius as margin, in
    /// batches of [`DEFAULT_BATCH`].
    pub fn for_network(cfg: &RdnConfig) -> Self {
        Self::new(cfg, DEFAULT_WINDOW, DEFAULT_BATCH)
    }

    /// Windows of `window` (raised to `2R + 1` if smaller, so each keeps a core) with the
    /// network's receptive radius `R` as margin, `batch` (at least 1) per pass.
    pub fn new(cfg: &RdnConfig, window: usize, batch: usize) -> Self {
        let margin = cfg.receptive_radius();
        Self {
            window: window.max(2 * margin + 1),
            margin,
            batch: batch.max(1),
        }
    }

    /// The tiles of a `width × height` image, row by row.
    pub fn tiles(&self, width: usize, height: usize) -> Vec<Tile> {
        let columns = self.spans(width);
        self.spans(height)
            .iter()
            .flat_map(|y| {
                columns.iter().map(|x| Tile {
                    x: x.clone(),
                    y: y.clone(),
                })
            })
            .collect()
    }

    /// Cuts `0..len` into windows of one size whose cores partition it: as few windows as
    /// cores of at most `window - 2 · margin` need, their cores made equal (the last may be
    /// shorter) and each window its core plus the margin, slid inside the image at its edges.
    fn spans(&self, len: usize) -> Vec<Span> {
        if len <= self.window {
            return vec![Span {
                window: 0..len,
                core: 0..len,
            }];
        }
        let count = len.div_ceil(self.window - 2 * self.margin);
        let core = len.div_ceil(count);
        let window = (core + 2 * self.margin).min(len);
        (0..len)
            .step_by(core)
            .map(|start| {
                let first = start.saturating_sub(self.margin).min(len - window);
                Span {
                    window: first..first + window,
                    core: start..(start + core).min(len),
                }
            })
            .collect()
    }
}

/// One interval of a tile along one axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The pixels run through the network.
    pub window: Range<usize>,
    /// The pixels kept from the result (within `window`).
    pub core: Range<usize>,
}

impl Span {
    /// Where the core starts within the window.
    pub fn core_offset(&self) -> usize {
        self.core.start - self.window.start
    }
}

/// One tile: a window of the image and the core kept from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    /// Columns.
    pub x: Span,
    /// Rows.
    pub y: Span,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling(window: usize, margin: usize) -> Tiling {
        Tiling {
            window,
            margin,
            batch: 1,
        }
    }

    /// Every core lies in its window, keeps `margin` from every cut, and the cores cover
    /// `0..len` exactly once; all windows have one size.
    fn check(t: &Tiling, len: usize) {
        let spans = t.spans(len);
        let mut next = 0;
        for s in &spans {
            assert_eq!(s.core.start, next, "{spans:?}");
            next = s.core.end;
            assert!(s.window.start <= s.core.start && s.core.end <= s.window.end);
            assert!(s.window.start == 0 || s.core.start - s.window.start >= t.margin);
            assert!(s.window.end == len || s.window.end - s.core.end >= t.margin);
            assert_eq!(s.window.len(), spans[0].window.len());
            assert!(s.window.len() <= t.window);
        }
        assert_eq!(next, len);
    }

    #[test]
    fn cores_partition_the_axis_and_keep_the_margin_from_every_cut() {
        for (window, margin) in [(21, 10), (32, 10), (128, 10), (5, 2)] {
            for len in [1, 2, 11, 20, 21, 22, 31, 32, 33, 63, 100, 257, 1000] {
                check(&tiling(window, margin), len);
            }
        }
    }

    #[test]
    fn a_small_image_is_one_tile_and_a_large_one_many() {
        let t = tiling(32, 10);
        assert_eq!(t.tiles(7, 32).len(), 1);
        let tiles = t.tiles(33, 1);
        assert_eq!(tiles.len(), 3);
        assert!(tiles.iter().all(|tile| tile.x.window.len() == 31));
        assert_eq!(tiles[2].x.core, 22..33);
        assert_eq!(tiles[2].x.window, 2..33);
        assert_eq!(t.tiles(100, 40).len(), 9 * 4);
        // 1024 in windows of up to 128 with a margin of 10: ten windows of 123, not 128.
        let spans = tiling(128, 10).spans(1024);
        assert_eq!(spans.len(), 10);
        assert_eq!(spans[0].window.len(), 123);
    }

    #[test]
    fn the_margin_is_the_receptive_radius_and_the_window_keeps_a_core() {
        let cfg = RdnConfig::slim(2);
        let t = Tiling::new(&cfg, 4, 0);
        assert_eq!(t.margin, cfg.receptive_radius());
        assert_eq!(t.window, 2 * t.margin + 1);
        assert_eq!(t.batch, 1);
    }
}
