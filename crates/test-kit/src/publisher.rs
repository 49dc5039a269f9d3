//! The ffmpeg test-pattern publisher: `testsrc2` video (H.264) and a `sine` tone (AAC) from
//! lavfi, encoded to FLV for an RTMP URL or a file, or to any other format ffmpeg writes.
//! One builder for every test, benchmark and the stack's publisher service, so each says only
//! what it needs to differ (size, GOP, duration, real time).
//!
//! ```no_run
//! use test_kit::Publisher;
//! // 320x240 at 30 fps, a keyframe every 60 frames, published in real time for 10 s.
//! let publisher = Publisher::new(320, 240, 30)
//!     .gop(60)
//!     .seconds(10)
//!     .realtime()
//!     .spawn("rtmp://127.0.0.1:1935/live/demo");
//! ```

use std::path::Path;
use std::process::{Command, Stdio};

use crate::process::Killed;

/// What to encode and how; [`Publisher::args`] is the ffmpeg argv.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// The lavfi video source (default `testsrc2=size=WxH:rate=FPS`).
    video: String,
    /// The lavfi audio source, `None` for no audio.
    audio: Option<String>,
    /// ffmpeg's `-loglevel`.
    log_level: String,
    /// `-re` on every input: read at the native frame rate (a live publisher) rather than as
    /// fast as possible (encoding a clip).
    realtime: bool,
    /// `-t`: stop after this many seconds.
    seconds: Option<f64>,
    /// `-g`: frames between keyframes.
    gop: Option<u32>,
    /// `-keyint_min GOP -sc_threshold 0`: keyframes exactly every GOP, none on scene cuts
    /// (what segmenters cutting at fixed durations need).
    fixed_gop: bool,
    /// `-preset`.
    preset: String,
    /// `-tune zerolatency`: no lookahead or B-frames, frames leave the encoder at once.
    zerolatency: bool,
    /// `-pix_fmt yuv420p` (what every player decodes).
    yuv420p: bool,
    /// `-b:v`.
    video_bitrate: Option<String>,
    /// `-b:a`.
    audio_bitrate: Option<String>,
    /// Extra output options, after the codec options.
    output_args: Vec<String>,
    /// `-f`.
    format: String,
}

impl Publisher {
    /// The test pattern at `width`x`height` and `fps`, with a 440 Hz tone; H.264 `ultrafast`
    /// and AAC in FLV; errors only on stderr; no duration limit.
    pub fn new(width: u32, height: u32, fps: u32) -> Publisher {
        Publisher {
            video: format!("testsrc2=size={width}x{height}:rate={fps}"),
            audio: Some("sine".into()),
            log_level: "error".into(),
            realtime: false,
            seconds: None,
            gop: None,
            fixed_gop: false,
            preset: "ultrafast".into(),
            zerolatency: false,
            yuv420p: false,
            video_bitrate: None,
            audio_bitrate: None,
            output_args: Vec::new(),
            format: "flv".into(),
        }
    }

    /// Another lavfi video source instead of the test pattern (e.g. noise that barely
    /// compresses).
    pub fn video_source(mut self, lavfi: &str) -> Self {
        self.video = lavfi.into();
        self
    }

    /// Another lavfi audio source (e.g. `sine=frequency=440:sample_rate=48000`).
    pub fn audio_source(mut self, lavfi: &str) -> Self {
        self.audio = Some(lavfi.into());
        self
    }

    /// No audio track.
    pub fn no_audio(mut self) -> Self {
        self.audio = None;
        self
    }

    /// ffmpeg's `-loglevel` (default `error`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    /// Reads the sources in real time (`-re`), as a live publisher sends.
    pub fn realtime(mut self) -> Self {
        self.realtime = true;
        self
    }

    /// Stops after `seconds` of media.
    pub fn seconds(mut self, seconds: impl Into<f64>) -> Self {
        self.seconds = Some(seconds.into());
        self
    }

    /// A keyframe at most every `frames` frames (`-g`).
    pub fn gop(mut self, frames: u32) -> Self {
        self.gop = Some(frames);
        self
    }

    /// A keyframe exactly every `frames` frames: `-g`, `-keyint_min`, and no extra keyframe
    /// on scene changes.
    pub fn fixed_gop(mut self, frames: u32) -> Self {
        self.gop = Some(frames);
        self.fixed_gop = true;
        self
    }

    /// The x264 preset (default `ultrafast`).
    pub fn preset(mut self, preset: &str) -> Self {
        self.preset = preset.into();
        self
    }

    /// `-tune zerolatency`.
    pub fn zerolatency(mut self) -> Self {
        self.zerolatency = true;
        self
    }

    /// `-pix_fmt yuv420p`.
    pub fn yuv420p(mut self) -> Self {
        self.yuv420p = true;
        self
    }

    /// Video bitrate, e.g. `2000k`.
    pub fn video_bitrate(mut self, rate: &str) -> Self {
        self.video_bitrate = Some(rate.into());
        self
    }

    /// Audio bitrate, e.g. `128k`.
    pub fn audio_bitrate(mut self, rate: &str) -> Self {
        self.audio_bitrate = Some(rate.into());
        self
    }

    /// Extra output options (e.g. `-qp 10`, or the HLS muxer's), given after the codec
    /// options.
    pub fn output_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.output_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The output format (default `flv`).
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.into();
        self
    }

    /// ffmpeg's arguments (without `ffmpeg` itself) writing to `output`, a URL or a path.
    pub fn args(&self, output: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "-hide_banner",
            "-loglevel",
            &self.log_level,
            "-nostdin",
            "-y",
        ]
        .map(String::from)
        .to_vec();
        let input = |a: &mut Vec<String>, source: &str| {
            if self.realtime {
                a.push("-re".into());
            }
            a.extend(["-f", "lavfi", "-i", source].map(String::from));
        };
        input(&mut a, &self.video);
        if let Some(audio) = &self.audio {
            input(&mut a, audio);
        }
        if let Some(t) = self.seconds {
            a.extend(["-t".into(), t.to_string()]);
        }
        a.extend(["-c:v", "libx264", "-preset", &self.preset].map(String::from));
        if self.zerolatency {
            a.extend(["-tune", "zerolatency"].map(String::from));
        }
        if self.yuv420p {
            a.extend(["-pix_fmt", "yuv420p"].map(String::from));
        }
        if let Some(g) = self.gop {
            a.extend(["-g".into(), g.to_string()]);
            if self.fixed_gop {
                a.extend(["-keyint_min".into(), g.to_string()]);
                a.extend(["-sc_threshold", "0"].map(String::from));
            }
        }
        if let Some(b) = &self.video_bitrate {
            a.extend(["-b:v".into(), b.clone()]);
        }
        if self.audio.is_some() {
            a.extend(["-c:a", "aac"].map(String::from));
            if let Some(b) = &self.audio_bitrate {
                a.extend(["-b:a".into(), b.clone()]);
            }
        }
        a.extend(self.output_args.iter().cloned());
        a.extend(["-f".into(), self.format.clone(), output.into()]);
        a
    }

    /// The ffmpeg command writing to `output` (stdin closed, stdout and stderr inherited).
    pub fn command(&self, output: &str) -> Command {
        let mut c = Command::new("ffmpeg");
        c.args(self.args(output)).stdin(Stdio::null());
        c
    }

    /// Starts publishing to `output`; the process is stopped when the handle is dropped.
    pub fn spawn(&self, output: &str) -> Killed {
        Killed(
            self.command(output)
                .spawn()
                .expect("ffmpeg installed (Debian package ffmpeg)"),
        )
    }

    /// Encodes into the file `path` and waits for ffmpeg; panics when it fails.
    pub fn encode(&self, path: &Path) {
        self.try_encode(path)
            .unwrap_or_else(|e| panic!("encoding {}: {e}", path.display()));
    }

    /// Encodes into the file `path` and waits for ffmpeg.
    pub fn try_encode(&self, path: &Path) -> std::io::Result<()> {
        let status = self.command(&path.to_string_lossy()).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("ffmpeg {status}")));
        }
        Ok(())
    }
}

/// ffmpeg's arguments (without `ffmpeg` itself) publishing the FLV file `clip` to `url` in a
/// loop, in real time, streams copied: many publishers for the price of one encode.
pub fn replay_args(clip: &Path, url: &str) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = ["-hide_banner", "-loglevel", "error", "-nostdin"]
        .into_iter()
        .chain(["-re", "-stream_loop", "-1", "-i"])
        .map(Into::into)
        .collect();
    a.push(clip.into());
    a.extend(["-c", "copy", "-f", "flv", url].map(Into::into));
    a
}
