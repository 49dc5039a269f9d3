//! The I/O edge: pulls events from a source, feeds the core, applies outputs, reconnects.
//!
//! A source is anything implementing [`Connector`]: the RTMP play client in production, an FLV
//! file (played once per "connection", each play being a new publish session) for local runs.
//! One thread per stream, each with a current-thread tokio runtime of its own (see
//! [`crate::run`] for why not tasks on a shared runtime): a source thread that has drained its
//! socket sleeps [`READ_BATCH_INTERVAL`] before reading again, so one wakeup handles several
//! messages (the packager's main CPU cost otherwise).
//!
//! Stopping: [`Pipeline::run`] takes a [`CancellationToken`]. It is checked between events, and
//! a source that waits (an RTMP connect, handshake or read) waits on it too, so a stop
//! interrupts a packager blocked on a silent ingest at once.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::flv::{self, TagType};
use crate::metrics::Metrics;
use crate::segmenter::{Event, Metadata, Output, Packager};
use crate::writer::{Progress, Writer};

/// Errors from a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Could not connect or read.
    #[error("source I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The source is not usable (bad URL, bad file, protocol error).
    #[error("source: {0}")]
    Other(String),
}

/// A connected source of events. `Ok(None)` means it closed.
pub trait EventStream {
    /// The next event, blocking.
    fn next_event(&mut self) -> Result<Option<Event>, SourceError>;

    /// Tells the source how much stream time may pass before anything can be published
    /// ([`Packager::ms_until_cut`]), so a live source may read less often. Default: ignored.
    ///
    /// [`Packager::ms_until_cut`]: crate::segmenter::Packager::ms_until_cut
    fn set_idle_hint(&mut self, _until_cut: Option<Duration>) {}
}

/// Opens connections to one stream.
pub trait Connector: Send {
    /// Connects (the RTMP client does its own connect timeout). Once `stop` is cancelled,
    /// waiting ends: `connect` fails, and the stream's `next_event` reports the end
    /// (`Ok(None)`), so a stopped source never stays blocked on a silent peer.
    fn connect(&mut self, stop: &CancellationToken) -> Result<Box<dyn EventStream>, SourceError>;
}

/// AMF0 onMetaData property names of the ingest contract.
pub const PROP_STREAM_START: &str = "streamStartTimeMs";
/// See [`PROP_STREAM_START`].
pub const PROP_SESSION_ID: &str = "streamSessionId";

/// Extracts the ingest's timing from onMetaData Number properties. Without `streamStartTimeMs`
/// (an ingest that does not implement the contract) we fall back to `fallback_now_ms` and log:
/// segments are then still valid but not interchangeable with another instance's.
pub fn metadata_from_numbers<'a>(
    props: impl IntoIterator<Item = (&'a str, Option<f64>)>,
    fallback_now_ms: u64,
) -> Metadata {
    let mut start = None;
    let mut session = None;
    for (name, value) in props {
        match (name, value) {
            (PROP_STREAM_START, Some(v)) if v.is_finite() && v >= 0.0 => start = Some(v as u64),
            (PROP_SESSION_ID, Some(v)) if v.is_finite() && v >= 0.0 => session = Some(v as u64),
            _ => {}
        }
    }
    let stream_start_time_ms = start.unwrap_or_else(|| {
        tracing::warn!("onMetaData without {PROP_STREAM_START}: using the local clock; instances will not be interchangeable");
        fallback_now_ms
    });
    Metadata {
        stream_start_time_ms,
        session_id: session.unwrap_or(stream_start_time_ms),
    }
}

/// UNIX time in ms.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stream name from a source URL or path: its last path component, restricted to characters
/// that are safe as a directory name.
pub fn stream_name(source: &str) -> Result<String, SourceError> {
    let last = source
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let name = last.strip_suffix(".flv").unwrap_or(last);
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(SourceError::Other(format!(
            "no usable stream name in {source:?}"
        )))
    }
}

/// Plays an FLV file as if it were one RTMP publish session (metadata with a fresh start time
/// and session id, then every tag). With `realtime`, tags are paced by their timestamps.
pub struct FileConnector {
    path: PathBuf,
    realtime: bool,
    sessions: u64,
}

impl FileConnector {
    /// A connector for `path`.
    pub fn new(path: impl Into<PathBuf>, realtime: bool) -> Self {
        Self {
            path: path.into(),
            realtime,
            sessions: 0,
        }
    }
}

impl Connector for FileConnector {
    /// A file never blocks for long (tags are paced a frame apart), so `stop` is only
    /// checked between events by [`Pipeline::run`].
    fn connect(&mut self, _stop: &CancellationToken) -> Result<Box<dyn EventStream>, SourceError> {
        let bytes = std::fs::read(&self.path)?;
        let tags = flv::read_file(&bytes).map_err(|e| SourceError::Other(e.to_string()))?;
        let now = unix_now_ms();
        // Each play of the file is a new session, numbered like the ingest numbers them.
        self.sessions += 1;
        let mut events = vec![(
            0,
            Event::Metadata(Metadata {
                stream_start_time_ms: now,
                session_id: self.sessions,
            }),
        )];
        for tag in tags {
            let (ts, data) = (tag.timestamp_ms, tag.data);
            match tag.kind {
                TagType::Audio => events.push((
                    ts,
                    Event::Audio {
                        timestamp_ms: ts,
                        data,
                    },
                )),
                TagType::Video => events.push((
                    ts,
                    Event::Video {
                        timestamp_ms: ts,
                        data,
                    },
                )),
                TagType::Script => {}
            }
        }
        events.push((events.last().map_or(0, |e| e.0), Event::EndOfSession));
        Ok(Box::new(FileStream {
            events: events.into_iter(),
            started: Instant::now(),
            realtime: self.realtime,
        }))
    }
}

struct FileStream {
    events: std::vec::IntoIter<(u32, Event)>,
    started: Instant,
    realtime: bool,
}

impl EventStream for FileStream {
    fn next_event(&mut self) -> Result<Option<Event>, SourceError> {
        let Some((ts, ev)) = self.events.next() else {
            return Ok(None);
        };
        if self.realtime {
            let due = self.started + Duration::from_millis(u64::from(ts));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        Ok(Some(ev))
    }
}

/// Builds an event from an FLV tag body, for sources that deliver raw tags.
pub fn tag_event(kind: TagType, timestamp_ms: u32, data: Bytes) -> Option<Event> {
    match kind {
        TagType::Audio => Some(Event::Audio { timestamp_ms, data }),
        TagType::Video => Some(Event::Video { timestamp_ms, data }),
        TagType::Script => None,
    }
}

/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Sleep granularity while backing off (how fast `stop` and write retries are noticed).
const BACKOFF_STEP: Duration = Duration::from_millis(50);

/// One stream's pipeline: source -> core -> writer, with metrics.
pub struct Pipeline {
    /// Stream name (metric label, directory name).
    pub stream: String,
    /// The sans-IO core.
    pub packager: Packager,
    /// The directory writer.
    pub writer: Writer,
    /// Metrics sink.
    pub metrics: Metrics,
}

impl Pipeline {
    /// Feeds one event through the core and the writer.
    pub fn handle(&mut self, event: Event) {
        let outputs = self.packager.push(event);
        for o in &outputs {
            match o {
                Output::Dropped(reason) => self
                    .metrics
                    .dropped_frames
                    .with_label_values(&[self.stream.as_str(), reason.as_str()])
                    .inc(),
                Output::PartialDiscarded { .. } => self
                    .metrics
                    .partial_segments
                    .with_label_values(&[&self.stream])
                    .inc(),
                Output::Discontinuity => self
                    .metrics
                    .discontinuities
                    .with_label_values(&[&self.stream])
                    .inc(),
                _ => {}
            }
        }
        let progress = self.writer.apply(outputs, Instant::now());
        self.record(progress);
    }

    /// Retries pending writes and due deletions.
    pub fn tick(&mut self) {
        let progress = self.writer.tick(Instant::now());
        self.record(progress);
    }

    fn record(&self, p: Progress) {
        let s = self.stream.as_str();
        self.metrics
            .write_errors
            .with_label_values(&[s])
            .inc_by(p.errors + p.abandoned);
        for seg in p.segments {
            tracing::info!(
                stream = s,
                msn = seg.msn,
                duration_ms = seg.duration_ms,
                "segment written"
            );
            self.metrics.segments_written.with_label_values(&[s]).inc();
            self.metrics
                .segment_duration
                .with_label_values(&[s])
                .observe(seg.duration_ms as f64 / 1000.0);
            self.metrics
                .newest_msn
                .with_label_values(&[s])
                .set(seg.msn as i64);
            self.metrics
                .lag_seconds
                .with_label_values(&[s])
                .set(crate::metrics::live_lag_seconds(
                    unix_now_ms(),
                    seg.pdt_ms + seg.duration_ms,
                ));
        }
    }

    /// Runs until `stop` is cancelled: connect, pump events, and on close or error tell the
    /// core, back off (doubling from 250 ms to 8 s, reset once a connection delivered events),
    /// retry. On stop, the event in hand is finished, the open segment is discarded as on a
    /// disconnect (it has no end), and pending writes get a last try.
    pub fn run(&mut self, connector: &mut dyn Connector, stop: &CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        while !stop.is_cancelled() {
            match connector.connect(stop) {
                Ok(mut events) => {
                    tracing::info!(stream = self.stream, "source connected");
                    self.metrics
                        .source_connected
                        .with_label_values(&[&self.stream])
                        .set(1);
                    while !stop.is_cancelled() {
                        match events.next_event() {
                            Ok(Some(ev)) => {
                                backoff = BACKOFF_MIN;
                                self.handle(ev);
                                events.set_idle_hint(
                                    self.packager.ms_until_cut().map(Duration::from_millis),
                                );
                            }
                            Ok(None) => {
                                tracing::info!(stream = self.stream, "source closed");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(stream = self.stream, error = %e, "source failed");
                                self.metrics
                                    .source_errors
                                    .with_label_values(&[&self.stream])
                                    .inc();
                                break;
                            }
                        }
                    }
                    self.metrics
                        .source_connected
                        .with_label_values(&[&self.stream])
                        .set(0);
                    self.handle(Event::Disconnected);
                }
                Err(_) if stop.is_cancelled() => break,
                Err(e) => {
                    tracing::warn!(stream = self.stream, error = %e, retry_in = ?backoff, "connect failed");
                    self.metrics
                        .source_errors
                        .with_label_values(&[&self.stream])
                        .inc();
                }
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !stop.is_cancelled() {
                self.tick();
                std::thread::sleep(BACKOFF_STEP);
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.tick();
        tracing::info!(stream = self.stream, "source stopped");
    }
}

/// Pulls one stream from the ingest with the `rtmp` crate's play client.
///
/// The client is async (tokio); each source thread owns a current-thread runtime and blocks on
/// it, which keeps the core and writer plain synchronous code.
pub struct RtmpConnector {
    url: String,
    timeout: Duration,
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
}

/// NetStream status telling a player that the publisher stopped.
const STATUS_UNPUBLISH: &str = "NetStream.Play.UnpublishNotify";

impl RtmpConnector {
    /// A connector for `url` (`rtmp://host:port/app/stream`) with a connect timeout.
    pub fn new(url: impl Into<String>, timeout: Duration) -> Result<Self, SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            url: url.into(),
            timeout,
            runtime: std::sync::Arc::new(runtime),
        })
    }
}

impl Connector for RtmpConnector {
    fn connect(&mut self, stop: &CancellationToken) -> Result<Box<dyn EventStream>, SourceError> {
        let connect = rtmp::client::PlayClient::connect(&self.url, self.timeout);
        let client = self.runtime.block_on(async {
            tokio::select! {
                biased;
                () = stop.cancelled() => Err(SourceError::Other("stopped".into())),
                client = connect => client
                    .map_err(|e| SourceError::Other(format!("connect {}: {e}", self.url))),
            }
        })?;
        Ok(Box::new(RtmpStream {
            client,
            runtime: self.runtime.clone(),
            batch: READ_BATCH_INTERVAL,
            stop: stop.clone(),
        }))
    }
}

/// How long a source thread sleeps at least once it has drained its socket, so that the
/// next wakeup finds several messages to read at once.
///
/// Why: a stream's ~80 messages/s (30 video, ~47 AAC frames) would otherwise each cost a
/// wakeup (epoll_wait, context switch, one read, one ACK), which is most of the packager's
/// CPU. 40 ms adds at most that much to when a segment is published (2 % of a 2 s target
/// duration) and changes nothing in what is written.
pub const READ_BATCH_INTERVAL: Duration = Duration::from_millis(40);

/// How long a source thread sleeps at most once it has drained its socket.
///
/// Until the keyframe that closes the open segment nothing can be published, so the thread
/// sleeps until that cut is due ([`EventStream::set_idle_hint`]: the first keyframe after
/// the next target-duration boundary, predicted from the GOP length), in steps of at most
/// this, then reads every [`READ_BATCH_INTERVAL`] until the keyframe arrives: about two
/// wakeups per 2 s segment instead of fifty, and, with a regular GOP, no added delay to a
/// segment (an irregular early keyframe is noticed up to this late). The
/// kernel's socket buffer (auto-tuned up to `net.ipv4.tcp_rmem`'s maximum, 6 MiB by
/// default) and then the ingest's per-subscriber queue (about 13 s of a stream) hold the
/// media meanwhile: 1 s of a 2.5 Mbit/s stream is about 320 KiB.
pub const MAX_READ_BATCH_INTERVAL: Duration = Duration::from_secs(1);

struct RtmpStream {
    client: rtmp::client::PlayClient,
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
    /// How long to sleep after draining the socket (from the idle hint).
    batch: Duration,
    /// Ends a wait for the next event (the connection is dropped, not read further).
    stop: CancellationToken,
}

/// The client's next event; when it has nothing buffered and the socket is empty, first waits
/// `batch` (see [`READ_BATCH_INTERVAL`]).
///
/// The future is polled once and, if pending, kept alive (not cancelled) and awaited after a
/// blocking sleep: `PlayClient::next_event` is not cancel-safe, and the sleep may block because
/// this current-thread runtime runs nothing else (nothing else to starve). Readiness that
/// arrives meanwhile is picked up by the next reactor turn without a context switch.
async fn next_batched(
    client: &mut rtmp::client::PlayClient,
    batch: Duration,
) -> Result<Option<rtmp::client::PlayEvent>, rtmp::client::ClientError> {
    let mut next = std::pin::pin!(client.next_event());
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(next.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(ev) = first {
        return ev;
    }
    std::thread::sleep(batch);
    next.await
}

impl EventStream for RtmpStream {
    fn set_idle_hint(&mut self, until_cut: Option<Duration>) {
        self.batch = until_cut.map_or(READ_BATCH_INTERVAL, |d| {
            d.clamp(READ_BATCH_INTERVAL, MAX_READ_BATCH_INTERVAL)
        });
    }

    fn next_event(&mut self) -> Result<Option<Event>, SourceError> {
        use rtmp::client::PlayEvent;
        loop {
            let (client, batch, stop) = (&mut self.client, self.batch, &self.stop);
            let ev = self
                .runtime
                .block_on(async {
                    tokio::select! {
                        biased;
                        // Dropping a pending read is fine here: the connection is not used
                        // again (`next_event` is not cancel-safe, so it must not be).
                        () = stop.cancelled() => Ok(None),
                        ev = next_batched(client, batch) => ev,
                    }
                })
                .map_err(|e| SourceError::Other(e.to_string()))?;
            let Some(ev) = ev else { return Ok(None) };
            let mapped = match &ev {
                PlayEvent::Metadata(props) => {
                    let numbers = props.iter().map(|(k, v)| {
                        (
                            k.as_str(),
                            match v {
                                rtmp::amf0::Value::Number(n) => Some(*n),
                                _ => None,
                            },
                        )
                    });
                    Some(Event::Metadata(metadata_from_numbers(
                        numbers,
                        unix_now_ms(),
                    )))
                }
                PlayEvent::Audio { timestamp_ms, data } => Some(Event::Audio {
                    timestamp_ms: *timestamp_ms,
                    data: data.clone(),
                }),
                PlayEvent::Video { timestamp_ms, data } => Some(Event::Video {
                    timestamp_ms: *timestamp_ms,
                    data: data.clone(),
                }),
                PlayEvent::Status(code) if code == STATUS_UNPUBLISH => Some(Event::EndOfSession),
                PlayEvent::Status(code) => {
                    tracing::debug!(code, "rtmp status");
                    None
                }
            };
            if let Some(e) = mapped {
                return Ok(Some(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert_eq!(
            stream_name("rtmp://127.0.0.1:1935/live/demo").unwrap(),
            "demo"
        );
        assert_eq!(stream_name("/tmp/x/cam-1.flv").unwrap(), "cam-1");
        assert!(stream_name("rtmp://h/live/..").is_err());
        assert!(stream_name("rtmp://h/live/a b").is_err());
    }

    #[test]
    fn metadata_numbers() {
        let m = metadata_from_numbers(
            [
                ("streamStartTimeMs", Some(1.7e12)),
                ("streamSessionId", Some(3.0)),
                ("width", Some(1.0)),
            ],
            5,
        );
        assert_eq!(m.stream_start_time_ms, 1_700_000_000_000);
        assert_eq!(m.session_id, 3);
        assert_eq!(metadata_from_numbers([], 5).stream_start_time_ms, 5);
    }
}
