//! What HLS needs from an origin per file type: the content type and the caching policy.
//!
//! Only known HLS file types are served at all: an unknown extension is a 404, which keeps
//! whatever else lands in the packager's directory (temp files, logs) private.

use std::path::Path;

/// Live playlists change every target duration, so nobody may reuse one without asking:
/// `no-cache` forces revalidation (cheap, thanks to ETag/304) and never serves a stale window.
pub const PLAYLIST_CACHE_CONTROL: &str = "no-cache";
/// Segments are immutable once renamed into place (the packager names each one once, by
/// stream time), so caches may keep them as long as they like.
pub const SEGMENT_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// MPEG-TS packet size (ISO/IEC 13818-1 2.4.3.2; RFC 8216 3.2): a whole `.ts` segment is a
/// whole number of these, and one that is not was cut short (see `handler::serve_file`).
pub const TS_PACKET_BYTES: u64 = 188;
/// Health, metrics and error responses describe the present moment only.
pub const NO_STORE: &str = "no-store";

/// The kinds of file the origin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `.m3u8` playlist (RFC 8216 section 4: `application/vnd.apple.mpegurl`).
    Playlist,
    /// MPEG-2 transport stream segment (RFC 8216 section 3.2).
    TransportStream,
    /// fMP4 media segment (RFC 8216 section 3.3).
    Fmp4Segment,
    /// fMP4 initialization section (`EXT-X-MAP`), usually `init.mp4`.
    Mp4,
    /// Packed audio (RFC 8216 section 3.4).
    Aac,
    /// WebVTT subtitles (RFC 8216 section 3.5).
    WebVtt,
}

impl MediaKind {
    /// The kind for a path's extension, or `None` for anything the origin does not serve.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "m3u8" => MediaKind::Playlist,
            "ts" => MediaKind::TransportStream,
            "m4s" => MediaKind::Fmp4Segment,
            "mp4" => MediaKind::Mp4,
            "aac" => MediaKind::Aac,
            "vtt" => MediaKind::WebVtt,
            _ => return None,
        })
    }

    /// `Content-Type` value.
    pub fn content_type(self) -> &'static str {
        match self {
            MediaKind::Playlist => "application/vnd.apple.mpegurl",
            MediaKind::TransportStream => "video/mp2t",
            // RFC 8216 3.3 names no type for fMP4 segments; `video/mp4` is what packagers
            // (Shaka, Bento4) document and what every MSE player accepts.
            MediaKind::Fmp4Segment | MediaKind::Mp4 => "video/mp4",
            MediaKind::Aac => "audio/aac",
            MediaKind::WebVtt => "text/vtt",
        }
    }

    /// Whether the file is replaced in place over time (a playlist) rather than written once.
    pub fn is_playlist(self) -> bool {
        self == MediaKind::Playlist
    }

    /// `Cache-Control` value for a successful response.
    pub fn cache_control(self) -> &'static str {
        if self.is_playlist() {
            PLAYLIST_CACHE_CONTROL
        } else {
            SEGMENT_CACHE_CONTROL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension() {
        let kind = |p: &str| MediaKind::from_path(Path::new(p));
        assert_eq!(kind("a/index.m3u8"), Some(MediaKind::Playlist));
        assert_eq!(kind("a/SEG.TS"), Some(MediaKind::TransportStream));
        assert_eq!(kind("a/1.m4s"), Some(MediaKind::Fmp4Segment));
        assert_eq!(kind("a/init.mp4"), Some(MediaKind::Mp4));
        assert_eq!(kind("a/index.m3u8.tmp"), None);
        assert_eq!(kind("a/noext"), None);
    }
}
