//! The checks each fuzz target runs on one input. `tests/fuzz_regressions.rs`
//! includes this file as a module (`#[path]`), so a crash input fails the
//! same way under `cargo fuzz` and under `cargo test`. Every check panics on
//! a broken invariant and otherwise returns nothing; a panic is a finding.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use zoneguard::cache::{normalize, ClassifyCache};
use zoneguard::classify::{self, reading, StatementInfo};
use zoneguard::protocol::{self, FirstPacket, Frame, ProtocolError, MAX_STARTUP_LEN};

/// The frame limit the targets use (the guard's own is configurable).
pub const MAX_FRAME: usize = 1 << 20;

// ---------------------------------------------------------------- frames

/// How a run of [`protocol::next_frame`] over a buffer ended.
#[derive(Debug, PartialEq, Eq)]
enum FramesEnd {
    /// More bytes are needed; this many are buffered.
    NeedMore(usize),
    Error(String),
}

/// Splits `data` into frames at once and again fed in chunks of a size the
/// first byte picks (so a header or body can arrive in pieces); both ways
/// give the same frames and end the same way. Each frame's body goes
/// through the message decoders.
pub fn frames(data: &[u8]) {
    let whole = split_whole(data);
    let chunk = data.first().map_or(1, |b| usize::from(b % 16) + 1);
    let streamed = split_streamed(data, chunk);
    assert_eq!(
        whole, streamed,
        "frames differ when fed in chunks of {chunk}"
    );
}

fn split_whole(data: &[u8]) -> (Vec<Bytes>, FramesEnd) {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    loop {
        match protocol::next_frame(&mut buf, MAX_FRAME) {
            Ok(Some(f)) => {
                check_frame(&f);
                out.push(f.raw);
            }
            Ok(None) => return (out, FramesEnd::NeedMore(buf.len())),
            Err(e) => return (out, FramesEnd::Error(e.to_string())),
        }
    }
}

fn split_streamed(data: &[u8], chunk: usize) -> (Vec<Bytes>, FramesEnd) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match protocol::next_frame(&mut buf, MAX_FRAME) {
                Ok(Some(f)) => out.push(f.raw),
                Ok(None) => break,
                Err(e) => return (out, FramesEnd::Error(e.to_string())),
            }
        }
    }
    (out, FramesEnd::NeedMore(buf.len()))
}

fn check_frame(f: &Frame) {
    let raw = &f.raw;
    assert!(
        raw.len() >= 5 && raw.len() <= MAX_FRAME,
        "frame of {}",
        raw.len()
    );
    let len = i32::from_be_bytes(raw[1..5].try_into().unwrap());
    assert_eq!(len as usize + 1, raw.len(), "length field");
    let _ = f.tag();
    let body = f.body();
    // Every decoder on every body, whatever the tag says.
    if let Ok(q) = protocol::query_text(body) {
        assert!(!q.contains(&0) && body.get(q.len()) == Some(&0));
        let _ = protocol::sql_text(q);
    }
    if let Ok(p) = protocol::parse_message(body) {
        assert!(!p.name.contains(&0) && !p.query.contains(&0));
        assert!(p.param_types.len() >= 2 && (p.param_types.len() - 2) % 4 == 0);
        assert_eq!(
            p.name.len() + p.query.len() + 2 + p.param_types.len(),
            body.len()
        );
    }
    if let Ok((portal, statement)) = protocol::bind_names(body) {
        assert!(!portal.contains(&0) && !statement.contains(&0));
    }
}

// ---------------------------------------------------------------- startup

/// Reads the first packet of a connection from `data`, once from the slice
/// itself and once through a reader that hands out at most a few bytes per
/// read and is not ready every other poll; both give the same result.
pub fn startup(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime");
    rt.block_on(startup_async(data));
}

/// [`startup`] for callers already inside a runtime.
pub async fn startup_async(data: &[u8]) {
    let mut r = data;
    let whole = protocol::read_first_packet(&mut r).await;
    let consumed = data.len() - r.len();
    check_first_packet(data, consumed, &whole);

    let chunk = data.get(4).map_or(1, |b| usize::from(b % 7) + 1);
    let mut slow = Trickle {
        data,
        pos: 0,
        chunk,
        ready: false,
    };
    let trickled = protocol::read_first_packet(&mut slow).await;
    assert_eq!(
        summary(&whole),
        summary(&trickled),
        "result differs when read {chunk} bytes at a time"
    );
    if matches!(whole, Ok(Some(_))) {
        assert_eq!(slow.pos, consumed, "bytes consumed");
    }
}

fn check_first_packet(
    data: &[u8],
    consumed: usize,
    got: &Result<Option<FirstPacket>, ProtocolError>,
) {
    let declared = data
        .get(..4)
        .map(|b| i32::from_be_bytes(b.try_into().unwrap()));
    match got {
        Ok(None) => assert!(data.is_empty(), "EOF reported with {} bytes", data.len()),
        Ok(Some(p)) => {
            let len = declared.expect("a packet has a length") as usize;
            assert!((8..=MAX_STARTUP_LEN).contains(&len), "length {len}");
            assert_eq!(consumed, len, "a packet is read exactly");
            match p {
                FirstPacket::Ssl | FirstPacket::GssEnc => assert_eq!(len, 8),
                FirstPacket::Cancel(raw) => assert_eq!(&raw[..], &data[..16]),
                FirstPacket::Startup(s) => {
                    match &s.negotiate {
                        None => assert_eq!(&s.raw[..], &data[..len], "raw is the packet as sent"),
                        // A newer 3.x minor version: relayed as 3.0, without
                        // the protocol options the guard answered for.
                        Some(v) => {
                            assert_eq!(v[0], b'v');
                            assert_eq!(
                                &s.raw[4..8],
                                &zoneguard::protocol::PROTOCOL_3_0.to_be_bytes()
                            );
                            assert!(s.params.iter().all(|(k, _)| !k.starts_with("_pq_.")));
                        }
                    }
                    for (k, v) in &s.params {
                        assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
                    }
                    let _ = (s.user(), s.database());
                }
            }
        }
        Err(ProtocolError::BadLength { len, .. }) => {
            assert!(!(8..=MAX_STARTUP_LEN as i64).contains(len));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A result in a comparable form (errors by message).
fn summary(r: &Result<Option<FirstPacket>, ProtocolError>) -> String {
    match r {
        Ok(p) => format!("{p:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// An `AsyncRead` over a slice that returns at most `chunk` bytes per read
/// and `Pending` (after waking itself) on every other poll.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
    ready: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        buf.put_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------- classify

/// Classifies `data` (read as UTF-8 with invalid bytes replaced, as the
/// session does), scans it, and normalises it for the cache, checking the
/// reading invariants (R1 in `classify/reading.rs`) and, when `cache` is
/// given, that the cache returns what a fresh classification does.
pub fn classify(data: &[u8], cache: Option<&CacheCheck>) {
    let s = String::from_utf8_lossy(data);
    let fresh = classify::classify(&s);

    let lexed = reading::scan(data);
    let plain = data.is_ascii() && !data.contains(&b'\\');
    // R1: only ASCII text without a backslash reads the same everywhere.
    assert_eq!(
        reading::depends_on_settings(data),
        !plain,
        "depends_on_settings"
    );
    let ambiguous = reading::ambiguous_mid_batch(data, true);
    if plain {
        assert_eq!(ambiguous, None, "plain text judged ambiguous");
    }
    if !data.is_ascii() {
        // With a run of backslashes right after a non-ASCII byte that ends
        // at a quote (a swallowed backslash flips whether the quote is
        // escaped), or with non-ASCII names in the policy, another client
        // encoding could read it differently.
        let with_names = reading::ambiguous_mid_batch(data, false);
        assert!(with_names.is_some(), "non-ASCII text judged unambiguous");
        let flips_a_quote = data.windows(2).enumerate().any(|(i, w)| {
            w[0] >= 0x80 && w[1] == b'\\' && {
                let run = data[i + 1..].iter().take_while(|&&b| b == b'\\').count();
                data.get(i + 1 + run) == Some(&b'\'')
            }
        });
        if flips_a_quote {
            assert!(
                ambiguous.is_some(),
                "a backslash run after a non-ASCII byte, ending at a quote, judged unambiguous"
            );
        }
    }
    if ambiguous.is_none() && data.contains(&b'\\') {
        assert!(
            matches!(
                lexed,
                reading::Lexed::Complete {
                    off_reading_differs: false
                }
            ),
            "backslash text judged unambiguous, scanned as {lexed:?}"
        );
    }

    if let Some(key) = normalize(&s) {
        assert!(!s.contains('\0') && !s.contains('\\'), "normalised {s:?}");
        assert!(key.contains('\0'), "a normalised key has a marker: {key:?}");
    }
    if let Some(c) = cache {
        c.check(&s, &fresh);
    }
}

/// A cache shared by the inputs of one run, and the first text seen under
/// each normalised key (to name both texts when the cache disagrees).
pub struct CacheCheck {
    cache: ClassifyCache,
    first: Mutex<HashMap<String, String>>,
}

impl Default for CacheCheck {
    fn default() -> Self {
        CacheCheck {
            cache: ClassifyCache::new(4096),
            first: Mutex::new(HashMap::new()),
        }
    }
}

impl CacheCheck {
    fn check(&self, s: &str, fresh: &[StatementInfo]) {
        let key = normalize(s);
        let earlier = key.as_ref().map(|k| {
            let mut first = self.first.lock().unwrap();
            if first.len() > 100_000 {
                first.clear();
            }
            first
                .entry(k.clone())
                .or_insert_with(|| s.to_owned())
                .clone()
        });
        let cached = self.cache.classify(s);
        assert!(
            *cached == fresh,
            "the cache changes the classification of {s:?} \
             (normalised key {key:?}, first seen as {earlier:?}):\n\
             cached {cached:?}\nfresh {fresh:?}"
        );
    }
}
