//! Hand-written media for the decoder tests: GIF blocks, PNG chunks with their CRCs, a zlib
//! stream of zeros (a decompression bomb of any size), APNG frame controls, WAV headers.
//! Valid where the tests need them to be, lying where they must. And the process's peak
//! memory, to show a decoder did not allocate for a lie.

use std::io::Cursor;

use image::{ImageFormat, RgbImage};

/// The process's peak resident memory, in bytes (`VmHWM`).
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

// ---- GIF, block by block ----

/// A GIF with a `canvas` logical screen (two-colour global table) and one image
/// descriptor per `(left, top, width, height)`, each with a few bytes of LZW data.
pub fn gif(canvas: (u16, u16), frames: &[(u16, u16, u16, u16)]) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(canvas.0.to_le_bytes());
    out.extend(canvas.1.to_le_bytes());
    out.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    for &(left, top, width, height) in frames {
        out.push(0x2C);
        for v in [left, top, width, height] {
            out.extend(v.to_le_bytes());
        }
        // No local table; LZW code size 2; one sub-block: clear, 0, end.
        out.extend([0x00, 0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    out.push(0x3B);
    out
}

// ---- PNG, chunk by chunk ----

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend(crc32(&body).to_be_bytes());
    out
}

/// A valid 8×8 RGB PNG.
pub fn small_png() -> Vec<u8> {
    let image = RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

/// `png` with `extra` chunks inserted right after its header chunk.
pub fn with_chunks(png: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let after_ihdr = 8 + 8 + 13 + 4;
    let mut out = png[..after_ihdr].to_vec();
    for c in extra {
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&png[after_ihdr..]);
    out
}

/// `png` with its header's width and height replaced (and the CRC fixed).
pub fn with_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut data = png[16..29].to_vec();
    data[..4].copy_from_slice(&width.to_be_bytes());
    data[4..8].copy_from_slice(&height.to_be_bytes());
    let mut out = png[..8].to_vec();
    out.extend(chunk(b"IHDR", &data));
    out.extend_from_slice(&png[33..]);
    out
}

/// Writes bits least significant first, as deflate does.
#[derive(Default)]
pub struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    pub fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, most significant bit first.
    pub fn code(&mut self, code: u64, bits: u32) {
        let reversed = (0..bits).fold(0, |r, i| r | (((code >> i) & 1) << (bits - 1 - i)));
        self.put(reversed, bits);
    }

    pub fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream that inflates to `1 + 258·k` zero bytes (at least `n`): one fixed-Huffman
/// block of a literal zero and then copies of 258 bytes at distance 1, 13 bits each.
pub fn zlib_zeros(n: usize) -> Vec<u8> {
    let copies = n.div_ceil(258);
    let mut bits = Bits::default();
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..copies {
        bits.code(0xC5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    let mut out = vec![0x78, 0x01];
    out.extend(bits.finish());
    // Adler-32 of the zeros: a stays 1, b grows by 1 a byte.
    let total = 1 + 258 * copies as u64;
    let adler = ((total % 65_521) << 16) | 1;
    out.extend((adler as u32).to_be_bytes());
    out
}

/// An `iCCP` chunk whose compressed profile inflates to at least `inflated` bytes.
pub fn iccp(inflated: usize) -> Vec<u8> {
    let mut data = b"bomb\0\0".to_vec();
    data.extend(zlib_zeros(inflated));
    chunk(b"iCCP", &data)
}

/// An APNG of `frames` frames of 8×8 whose `fcTL` chunks declare `frame` (w, h, x, y).
pub fn apng(frames: u32, frame: (u32, u32, u32, u32)) -> Vec<u8> {
    let png = small_png();
    let mut actl = frames.to_be_bytes().to_vec();
    actl.extend(0u32.to_be_bytes());
    let mut extra = vec![chunk(b"acTL", &actl)];
    for i in 0..frames {
        let mut fctl = i.to_be_bytes().to_vec();
        for v in [frame.0, frame.1, frame.2, frame.3] {
            fctl.extend(v.to_be_bytes());
        }
        fctl.extend([0, 1, 0, 10, 0, 0]);
        extra.push(chunk(b"fcTL", &fctl));
    }
    with_chunks(&png, &extra)
}

// ---- WAV headers ----

/// A 16 kHz PCM WAV header with `channels` and a data chunk declaring `declared` bytes,
/// followed by `carried` bytes of silence.
pub fn wav(channels: u16, declared: u32, carried: usize) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend(36u32.saturating_add(declared).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(channels.to_le_bytes());
    out.extend(16_000u32.to_le_bytes());
    out.extend((16_000 * 2 * u32::from(channels)).to_le_bytes());
    // The block (2 bytes a channel) does not fit 16 bits past 32767 channels.
    out.extend(channels.saturating_mul(2).to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(declared.to_le_bytes());
    out.extend(vec![0u8; carried]);
    out
}

/// Runs `ffmpeg -y -nostdin -hide_banner -loglevel error args… output` in `dir` (Debian's
/// ffmpeg, installed by `scripts/bootstrap`) and returns the bytes of `dir/output`.
pub fn ffmpeg(dir: &std::path::Path, args: &[&str], output: &str) -> Vec<u8> {
    let result = std::process::Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-y", "-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .arg(output)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg ({e}); scripts/bootstrap installs it"));
    assert!(
        result.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(dir.join(output)).unwrap()
}
