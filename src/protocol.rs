//! PostgreSQL protocol frames as the guard sees them: the untagged startup
//! packets, tagged messages kept as their raw bytes, and the few messages the
//! guard builds itself. Lengths are validated before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
pub const PROTOCOL_3_0: i32 = 196608;
/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unsupported frontend protocol {major}.{minor}: zoneguard supports 3.0")]
    UnsupportedProtocol { major: i32, minor: i32 },
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The first packet of a connection.
#[derive(Debug)]
pub enum FirstPacket {
    Ssl,
    GssEnc,
    /// The whole packet, to forward as is to the upstream.
    Cancel(Bytes),
    Startup(Startup),
}

#[derive(Debug, Clone)]
pub struct Startup {
    /// The whole packet as the client sent it, relayed byte for byte (for a
    /// newer 3.x minor version: the same parameters as a 3.0 packet).
    pub raw: Bytes,
    pub params: Vec<(String, String)>,
    /// For a client that asked for a newer 3.x minor version (libpq 18's
    /// 3.2): the NegotiateProtocolVersion to send it before anything else,
    /// naming 3.0 and the `_pq_.` options the guard does not know. The
    /// client then goes on in 3.0, as with a server that speaks only 3.0.
    pub negotiate: Option<Bytes>,
}

impl Startup {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn user(&self) -> &str {
        self.param("user").unwrap_or("")
    }
    /// The database, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> &str {
        // As PostgreSQL: no database, or an empty one, means the user's name.
        self.param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.user())
    }
}

/// Reads one untagged startup-phase packet. `Ok(None)` on a clean EOF before
/// any byte (port probes, health checks).
pub async fn read_first_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<FirstPacket>, ProtocolError> {
    let mut len_buf = [0u8; 4];
    match r.read(&mut len_buf[..1]).await? {
        0 => return Ok(None),
        _ => r
            .read_exact(&mut len_buf[1..])
            .await
            .map_err(|_| ProtocolError::Truncated)?,
    };
    let len = i32::from_be_bytes(len_buf) as i64;
    if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
        return Err(ProtocolError::BadLength { tag: '0', len });
    }
    let mut raw = BytesMut::with_capacity(len as usize);
    raw.extend_from_slice(&len_buf);
    raw.resize(len as usize, 0);
    r.read_exact(&mut raw[4..])
        .await
        .map_err(|_| ProtocolError::Truncated)?;
    let raw = raw.freeze();
    let code = i32::from_be_bytes(raw[4..8].try_into().unwrap());
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(FirstPacket::Ssl)),
        GSSENC_REQUEST if len == 8 => Ok(Some(FirstPacket::GssEnc)),
        CANCEL_REQUEST if len == 16 => Ok(Some(FirstPacket::Cancel(raw))),
        PROTOCOL_3_0 => Ok(Some(FirstPacket::Startup(Startup {
            params: parse_startup_params(&raw[8..])?,
            raw,
            negotiate: None,
        }))),
        // A newer minor version of protocol 3: answered as PostgreSQL
        // answers it (NegotiateProtocolVersion), and relayed as 3.0.
        newer if newer >> 16 == 3 => {
            let (options, params): (Vec<_>, Vec<_>) = parse_startup_params(&raw[8..])?
                .into_iter()
                .partition(|(k, _)| k.starts_with("_pq_."));
            let pairs: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let names: Vec<&str> = options.iter().map(|(k, _)| k.as_str()).collect();
            Ok(Some(FirstPacket::Startup(Startup {
                raw: startup_message(&pairs),
                negotiate: Some(negotiate_protocol_version(PROTOCOL_3_0, &names)),
                params,
            })))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::Malformed("startup")),
        other => Err(ProtocolError::UnsupportedProtocol {
            major: other >> 16,
            minor: other & 0xffff,
        }),
    }
}

fn parse_startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let key = take_cstr(&mut body).ok_or(ProtocolError::Malformed("startup"))?;
        if key.is_empty() {
            break;
        }
        let value = take_cstr(&mut body).ok_or(ProtocolError::Malformed("startup"))?;
        params.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(params)
}

/// Takes a NUL-terminated string off the front of `buf`.
pub fn take_cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = buf.iter().position(|b| *b == 0)?;
    let s = &buf[..end];
    *buf = &buf[end + 1..];
    Some(s)
}

/// A tagged message, kept as the exact bytes that arrived (tag and length
/// included), so it can be relayed without re-encoding.
#[derive(Debug, Clone)]
pub struct Frame {
    pub raw: Bytes,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// The total length (tag included) of the frame at the start of `buf`, if it
/// is complete: `Ok(None)` when more bytes are needed. Validates like
/// [`next_frame`], without splitting anything off.
pub fn peek_frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as i64;
    if len < 4 {
        return Err(ProtocolError::BadLength {
            tag: buf[0] as char,
            len,
        });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(ProtocolError::TooLarge { len: total, max });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Makes room in `buf` for the rest of a frame whose header (already
/// validated by [`peek_frame_len`]) has arrived but whose body has not.
pub fn reserve_for_frame(buf: &mut BytesMut) {
    if buf.len() >= 5 {
        let total = i32::from_be_bytes(buf[1..5].try_into().unwrap()).max(4) as usize + 1;
        buf.reserve(total.saturating_sub(buf.len()));
    }
}

/// Splits the next complete frame off `buf`: `Ok(None)` when more bytes are
/// needed (after reserving room for them), an error for a length that no
/// valid message has or that exceeds `max`.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(total) = peek_frame_len(buf, max)? else {
        reserve_for_frame(buf);
        return Ok(None);
    };
    Ok(Some(Frame {
        raw: buf.split_to(total).freeze(),
    }))
}

/// A statement's text as the classifier reads it: borrowed when it is valid
/// UTF-8 (the usual case, checked by the fast validator), else with invalid
/// bytes replaced.
pub fn sql_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The SQL text of a simple Query message.
pub fn query_text(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut b = body;
    let q = take_cstr(&mut b).ok_or(ProtocolError::Malformed("Query"))?;
    Ok(q)
}

/// A decoded Parse message: statement name, SQL, and the rest (parameter
/// types) as raw bytes.
pub struct ParseMsg<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    pub param_types: &'a [u8],
}

pub fn parse_message(body: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut b = body;
    let name = take_cstr(&mut b).ok_or(ProtocolError::Malformed("Parse"))?;
    let query = take_cstr(&mut b).ok_or(ProtocolError::Malformed("Parse"))?;
    if b.len() < 2 {
        return Err(ProtocolError::Malformed("Parse"));
    }
    let n = (&b[..2]).get_i16();
    if n < 0 || b.len() != 2 + 4 * n as usize {
        return Err(ProtocolError::Malformed("Parse"));
    }
    Ok(ParseMsg {
        name,
        query,
        param_types: b,
    })
}

/// NegotiateProtocolVersion: the newest protocol version the guard speaks
/// for the client's major version (sent whole, `3 << 16 | minor`, as
/// PostgreSQL sends it and libpq reads it), and the protocol options
/// (`_pq_.*`) it does not know.
pub fn negotiate_protocol_version(version: i32, unknown: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'v');
    b.put_i32(0);
    b.put_i32(version);
    b.put_i32(unknown.len() as i32);
    for o in unknown {
        b.put_slice(o.as_bytes());
        b.put_u8(0);
    }
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// Builds a StartupMessage (protocol 3.0) with the given parameters, e.g.
/// `[("user", "app"), ("database", "shop")]`.
pub fn startup_message(params: &[(&str, &str)]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(0); // length, patched below
    b.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        b.put_slice(k.as_bytes());
        b.put_u8(0);
        b.put_slice(v.as_bytes());
        b.put_u8(0);
    }
    b.put_u8(0);
    let len = b.len() as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// Builds a Query message.
pub fn query_message(sql: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(sql.len() + 6);
    b.put_u8(b'Q');
    b.put_i32((sql.len() + 5) as i32);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.freeze()
}

/// Builds a Parse message with no declared parameter types.
pub fn parse_message_bytes(name: &[u8], sql: &str) -> Bytes {
    let len = 4 + name.len() + 1 + sql.len() + 1 + 2;
    let mut b = BytesMut::with_capacity(len + 1);
    b.put_u8(b'P');
    b.put_i32(len as i32);
    b.put_slice(name);
    b.put_u8(0);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    b.freeze()
}

/// The portal and statement names of a Bind message.
pub fn bind_names(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let mut b = body;
    let portal = take_cstr(&mut b).ok_or(ProtocolError::Malformed("Bind"))?;
    let statement = take_cstr(&mut b).ok_or(ProtocolError::Malformed("Bind"))?;
    Ok((portal, statement))
}

/// A Bind of `statement` into the unnamed portal, with no parameters.
pub fn bind_message(statement: &str) -> Bytes {
    let len = 4 + 1 + statement.len() + 1 + 2 + 2 + 2;
    let mut b = BytesMut::with_capacity(len + 1);
    b.put_u8(b'B');
    b.put_i32(len as i32);
    b.put_u8(0);
    b.put_slice(statement.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    b.put_i16(0);
    b.put_i16(0);
    b.freeze()
}

/// Severity of an error the guard sends itself.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Error,
    Fatal,
}

/// Encodes an ErrorResponse.
pub fn error_response(severity: Severity, code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut fields = vec![
        (b'S', sev.to_string()),
        (b'V', sev.to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    let mut buf = BytesMut::new();
    ErrorResponse::new(fields)
        .encode(&mut buf)
        .expect("encoding an ErrorResponse into memory cannot fail");
    buf.freeze()
}

/// Encodes a ReadyForQuery with the given transaction status byte.
pub fn ready_for_query(status: u8) -> Bytes {
    let mut buf = BytesMut::new();
    ReadyForQuery::new(TransactionStatus::try_from(status).unwrap_or(TransactionStatus::Idle))
        .encode(&mut buf)
        .expect("encoding a ReadyForQuery into memory cannot fail");
    buf.freeze()
}

/// Builds a backend message: tag, then the length patched in after the body.
fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(tag);
    b.put_i32(0);
    body(&mut b);
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// RowDescription for text columns.
pub fn row_description(columns: &[&str]) -> Bytes {
    message(b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            b.put_slice(c.as_bytes());
            b.put_u8(0);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    })
}

/// DataRow of text values (None: NULL).
pub fn data_row(values: &[Option<&str>]) -> Bytes {
    message(b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    })
}

pub fn message_empty_query() -> Bytes {
    message(b'I', |_| {})
}

pub fn command_complete(tag: &str) -> Bytes {
    message(b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    })
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    message(b'S', |b| {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(value.as_bytes());
        b.put_u8(0);
    })
}

/// An Authentication message with the given code and extra bytes.
pub fn authentication(code: i32, extra: &[u8]) -> Bytes {
    message(b'R', |b| {
        b.put_i32(code);
        b.put_slice(extra);
    })
}

pub fn backend_key_data(pid: i32, key: i32) -> Bytes {
    message(b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    })
}

/// Finds `needle` in `hay` (the guard's marker in a server error).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_built_startup_message_reads_back() {
        let msg = startup_message(&[("user", "app"), ("database", "shop")]);
        let mut r = &msg[..];
        match read_first_packet(&mut r).await.unwrap() {
            Some(FirstPacket::Startup(s)) => {
                assert_eq!((s.user(), s.database()), ("app", "shop"));
                assert_eq!(&s.raw[..], &msg[..]);
            }
            _ => panic!("not a startup packet"),
        }
    }

    /// As PostgreSQL: an empty database name means the user's (the catalog
    /// of the right database is judged against).
    #[tokio::test]
    async fn an_empty_database_is_the_users() {
        for params in [
            &[("user", "app"), ("database", "")][..],
            &[("user", "app")][..],
        ] {
            let msg = startup_message(params);
            let mut r = &msg[..];
            match read_first_packet(&mut r).await.unwrap() {
                Some(FirstPacket::Startup(s)) => assert_eq!(s.database(), "app"),
                _ => panic!("not a startup packet"),
            }
        }
    }

    #[test]
    fn frames_split_and_wait_for_more() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&query_message("SELECT 1"));
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..7]);
        assert!(next_frame(&mut partial, 1 << 20).unwrap().is_none());
        let f = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(query_text(f.body()).unwrap(), b"SELECT 1");
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_and_huge_lengths_are_errors() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(matches!(
            next_frame(&mut buf, 100),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert!(matches!(
            next_frame(&mut buf, 100),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn parse_messages_round_trip() {
        let raw = parse_message_bytes(b"s1", "SELECT $1");
        let mut buf = BytesMut::from(&raw[..]);
        let f = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let p = parse_message(f.body()).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"SELECT $1");
        assert!(parse_message(b"s1\0SELECT\0\0\x05").is_err());
    }

    #[test]
    fn error_response_has_fields() {
        let e = error_response(Severity::Error, "42501", "no", Some("hint"));
        assert_eq!(e[0], b'E');
        assert!(find(&e, b"C42501\0").is_some());
        assert!(find(&e, b"Hhint\0").is_some());
        assert_eq!(&ready_for_query(b'T')[..], &[b'Z', 0, 0, 0, 5, b'T']);
    }
}
