//! The media models the agent runs, on candle (CPU by default; CUDA behind a later `cuda`
//! feature), and the converters that prepare their weights.
//!
//! Models run synchronously: the scheduler calls them from dedicated model threads.

pub mod animation;
pub mod audio_io;
pub mod convert;
pub mod esrgan;
pub mod ffmpeg;
pub mod image_io;
pub mod media_scan;
pub mod silero_vad;
pub mod stop;
pub mod tiny_sd;
pub mod video_upscale;
pub mod whisper;
