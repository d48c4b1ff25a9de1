//! The media formats that need a codec the pure-Rust crates lack, read and written by
//! Debian's `ffmpeg` and `ffprobe` run as bounded child processes.
//!
//! Why ffmpeg: it is the field's tool for media, and it covers what no pure-Rust crate does —
//! Opus, AAC and H.264 decoding, H.264 encoding, and resampling at broadcast quality — behind
//! one command line. WAV at the model's rate and GIF/APNG keep their pure-Rust decoders
//! ([`super::audio_io`], [`super::animation`]); everything else goes through here.
//!
//! The input is untrusted, so every run is bounded ([`process`]): a wall-clock timeout (the
//! process group is killed when it expires), a cap on the bytes read from its output
//! (computed by the caller from the probed limits, checked while reading), an address-space
//! cap (`prlimit --as`, set before ffmpeg starts: the workspace forbids the `unsafe` that a
//! `pre_exec` hook would need), `-nostdin`, `-hide_banner` and a bounded `-threads`. The input
//! is written to a private temporary directory (MP4 needs seeking) that is removed
//! afterwards; the only protocol allowed is `file`, and only the demuxers the caller names
//! may open it (`-format_whitelist`, then `-f` with the demuxer `ffprobe` reported), so a
//! playlist or concat list disguised as media cannot make ffmpeg read other files or the
//! network. `ffprobe` reports the container, codecs, sizes and duration as JSON ([`probe`])
//! before anything is decoded.
//!
//! Without `ffmpeg` or `ffprobe` on the `PATH` the agent logs a warning at start
//! ([`warn_if_missing`]) and refuses the inputs that need them with 422, naming the missing
//! tool; WAV at the model's rate, GIF and APNG are still served.

pub mod probe;
pub mod process;
pub mod video;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub use probe::{Probe, Stream};
pub use process::ScratchDir;

/// How ffmpeg and ffprobe are run: where they are and the bounds on every run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffmpeg {
    /// The `ffmpeg` program, found on the `PATH` when it has no directory.
    pub ffmpeg: PathBuf,
    /// The `ffprobe` program.
    pub ffprobe: PathBuf,
    /// Longest one run may take before its process group is killed.
    pub timeout: Duration,
    /// Address-space cap of one run, in bytes.
    pub memory_bytes: u64,
    /// Codec and filter threads of one run.
    pub threads: u32,
}

/// The wall-clock limit of one ffmpeg or ffprobe run. Decoding the largest accepted input
/// takes a few seconds on two CPU cores (ten minutes of 48 kHz stereo Opus to 16 kHz mono:
/// 2.5 s; of MP3: 1.3 s; 16 frames of 256 × 256 H.264: 0.2 s; encoding the largest output:
/// 0.2 s), so 30 s leaves room for a loaded machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The address-space cap of one run: 1 GiB, several times what decoding or encoding the
/// largest accepted input maps.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// Threads of one run: two, like a model's CPU worker.
pub const DEFAULT_THREADS: u32 = 2;

/// The most bytes of ffprobe's JSON report read (it lists a few fields of each stream).
const MAX_PROBE_BYTES: usize = 1 << 20;

impl Default for Ffmpeg {
    fn default() -> Self {
        Self {
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            threads: DEFAULT_THREADS,
        }
    }
}

/// Why ffmpeg or ffprobe could not read or write the media.
#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    /// A program is not installed.
    #[error(
        "{tool} is not installed on this agent (Debian package {package}); it is needed for {needed_for}"
    )]
    Missing {
        /// The missing program.
        tool: String,
        /// The Debian package that provides it.
        package: String,
        /// What the input needed it for.
        needed_for: String,
    },
    /// A run took longer than its limit and was killed.
    #[error("{tool} took longer than the {limit_ms} ms limit and was stopped")]
    TimedOut {
        /// The program.
        tool: String,
        /// The limit, in milliseconds.
        limit_ms: u128,
    },
    /// A run wrote more than the caller's cap (the caller names the limit behind it).
    #[error("{tool} wrote more than {max_bytes} bytes")]
    OutputTooLarge {
        /// The program.
        tool: String,
        /// The cap, in bytes.
        max_bytes: usize,
    },
    /// A run ended with an error: the input is broken or not what it claims.
    #[error("{tool} cannot read the input: {message}")]
    Failed {
        /// The program.
        tool: String,
        /// Its last error lines.
        message: String,
    },
    /// The media is readable but not accepted (container, codec, streams).
    #[error("{0}")]
    Refused(String),
    /// Starting a run, or the scratch files, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Ffmpeg {
    /// Runs ffprobe on `input`, letting only `demuxers` open it, and returns its report.
    pub fn probe(&self, input: &Path, demuxers: &[&str]) -> Result<Probe, FfmpegError> {
        let mut args = input_guard(demuxers);
        args.extend(
            [
                "-v",
                "error",
                "-hide_banner",
                "-count_packets",
                "-print_format",
                "json",
                "-show_entries",
                probe::ENTRIES,
            ]
            .map(String::from),
        );
        args.push(input.display().to_string());
        let json = self.run(&self.ffprobe, &args, MAX_PROBE_BYTES)?;
        probe::parse(&json, demuxers)
    }

    /// Runs ffmpeg with `args` after the common bounds, returning at most `max_stdout` bytes
    /// of its standard output.
    pub fn ffmpeg(&self, args: &[String], max_stdout: usize) -> Result<Vec<u8>, FfmpegError> {
        let mut all = ["-nostdin", "-hide_banner", "-loglevel", "error", "-threads"]
            .map(String::from)
            .to_vec();
        all.push(self.threads.to_string());
        all.extend(["-filter_threads".to_owned(), self.threads.to_string()]);
        all.extend_from_slice(args);
        self.run(&self.ffmpeg, &all, max_stdout)
    }

    /// Fails with [`FfmpegError::Missing`] unless both programs are on the `PATH`.
    pub fn check_installed(&self, needed_for: &str) -> Result<(), FfmpegError> {
        for (tool, package, path) in [
            ("ffprobe", "ffmpeg", &self.ffprobe),
            ("ffmpeg", "ffmpeg", &self.ffmpeg),
            ("prlimit", "util-linux", &PathBuf::from(process::PRLIMIT)),
        ] {
            if find_program(path).is_none() {
                return Err(FfmpegError::Missing {
                    tool: tool.to_owned(),
                    package: package.to_owned(),
                    needed_for: needed_for.to_owned(),
                });
            }
        }
        Ok(())
    }

    fn run(
        &self,
        program: &Path,
        args: &[String],
        max_stdout: usize,
    ) -> Result<Vec<u8>, FfmpegError> {
        let tool = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bounds = process::Bounds {
            timeout: self.timeout,
            max_stdout,
            memory_bytes: self.memory_bytes,
        };
        match process::run_bounded(program, args, &bounds) {
            Ok(output) => Ok(output),
            Err(process::RunError::TimedOut) => Err(FfmpegError::TimedOut {
                tool,
                limit_ms: self.timeout.as_millis(),
            }),
            Err(process::RunError::OutputTooLarge) => Err(FfmpegError::OutputTooLarge {
                tool,
                max_bytes: max_stdout,
            }),
            Err(process::RunError::Failed(message)) => Err(FfmpegError::Failed {
                tool,
                message: without_paths(&message, args),
            }),
            Err(process::RunError::Spawn(source)) => Err(FfmpegError::Io {
                what: format!("start {tool}"),
                source,
            }),
        }
    }
}

/// ffmpeg's error lines as a user may read them: the scratch paths in `args` reduced to
/// their file names, and the `[demuxer @ 0x…]` prefixes (memory addresses) dropped.
fn without_paths(message: &str, args: &[String]) -> String {
    let mut message = message.to_owned();
    for path in args.iter().filter(|a| a.starts_with('/')) {
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy());
        message = message.replace(path.as_str(), name.as_deref().unwrap_or("input"));
    }
    message
        .split("; ")
        .map(|line| match (line.starts_with('['), line.find("] ")) {
            (true, Some(end)) if line[..end].contains(" @ 0x") => &line[end + 2..],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The input options that keep ffmpeg and ffprobe to the scratch file and `demuxers`.
pub fn input_guard(demuxers: &[&str]) -> Vec<String> {
    vec![
        "-protocol_whitelist".to_owned(),
        "file".to_owned(),
        "-format_whitelist".to_owned(),
        demuxers.join(","),
    ]
}

/// `program` itself when it names a directory, else the first executable of that name on
/// the `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Logs once per process, at a model's construction, when ffmpeg or ffprobe is missing.
pub fn warn_if_missing(model: &str) {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if let Err(e) = Ffmpeg::default().check_installed(
            "MP3, FLAC, OGG/Opus, M4A/AAC, WAV at other rates, MP4, WebM and MOV input",
        ) {
            tracing::warn!(model, "{e}; those inputs will be refused with 422");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named() {
        let ffmpeg = Ffmpeg {
            ffprobe: PathBuf::from("/nonexistent/ffprobe"),
            ..Ffmpeg::default()
        };
        let err = ffmpeg.check_installed("MP3 input").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ffprobe is not installed on this agent (Debian package ffmpeg); it is needed for MP3 input"
        );
        let elsewhere = Ffmpeg {
            ffmpeg: PathBuf::from("no-such-ffmpeg-program"),
            ..Ffmpeg::default()
        };
        assert!(find_program(&elsewhere.ffmpeg).is_none());
        assert!(find_program(Path::new("sh")).is_some());
    }

    #[test]
    fn error_lines_lose_scratch_paths_and_addresses() {
        let args = ["-i".to_owned(), "/tmp/meridian-media-1-ab/input".to_owned()];
        let message = "[mp3 @ 0x5560905] Format not on whitelist 'mov'; \
                       /tmp/meridian-media-1-ab/input: Invalid argument";
        assert_eq!(
            without_paths(message, &args),
            "Format not on whitelist 'mov'; input: Invalid argument"
        );
    }
}
