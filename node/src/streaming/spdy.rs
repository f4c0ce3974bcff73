//! SPDY/3.1, as much of it as `kubectl port-forward` speaks, and the port-forward protocol
//! (`portforward.k8s.io`) on top of it.
//!
//! A frame has an 8-byte header. A control frame: the high bit set, the version (3) in the
//! next 15 bits, a 16-bit type, 8 bits of flags and a 24-bit length. A data frame: the high
//! bit clear, a 31-bit stream id, 8 bits of flags (`0x01` FIN) and a 24-bit length. Header
//! blocks (in SYN_STREAM, SYN_REPLY, HEADERS) are a count and length-prefixed names and
//! values, compressed with one zlib stream per direction for the whole connection, primed
//! with the dictionary of the SPDY/3 draft and flushed with a sync flush after each block.
//!
//! Port-forward: for each local connection the client opens two streams carrying the
//! headers `streamtype` (`error`, then `data`), `port` and `requestid` (the same for both).
//! The server answers every SYN_STREAM with a SYN_REPLY, connects to the pod's address and
//! port, and copies bytes between the TCP connection and the data stream; a failure is
//! written as text on the error stream. When the pod side ends, the server ends the data
//! stream and the error stream (FIN); the client's FIN on the data stream half-closes the
//! TCP connection; its RST_STREAM drops the connection.
//!
//! Not implemented, as the Go client (`spdystream`) does not use them either: flow control
//! (WINDOW_UPDATE is ignored; nothing is withheld), SETTINGS, server push, priorities.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: the stream was refused.
const REFUSED_STREAM: u32 = 3;
/// Control frames (header blocks) larger than this end the session.
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// A header block may not inflate beyond this.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Bytes read from the pod per data frame.
const CHUNK: usize = 32 * 1024;

/// The zlib dictionary of SPDY/3 header blocks (the draft's section 2.6.10.1): the
/// length-prefixed common header names and values, then common text. 1423 bytes.
pub(crate) fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TEXT: &[&str] = &[
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,public",
            "privatemax-age=gzip,deflate,sdch",
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut dict = Vec::with_capacity(1423);
        for w in WORDS {
            dict.extend_from_slice(&(w.len() as u32).to_be_bytes());
            dict.extend_from_slice(w.as_bytes());
        }
        for t in TEXT {
            dict.extend_from_slice(t.as_bytes());
        }
        dict
    })
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Header names and values, in order.
pub(crate) type Headers = Vec<(String, String)>;

/// Compresses this side's header blocks (one zlib stream for the connection).
pub(crate) struct Deflater(Compress);

impl Deflater {
    pub(crate) fn new() -> io::Result<Self> {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(dictionary())
            .map_err(|e| protocol_error(format!("set the SPDY dictionary: {e}")))?;
        Ok(Deflater(c))
    }

    /// The compressed block of `headers`.
    pub(crate) fn block(&mut self, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let consumed = (self.0.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.0
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| protocol_error(format!("compress a header block: {e}")))?;
            let consumed = (self.0.total_in() - start) as usize;
            // A sync flush is complete when it left output space unused.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Decompresses the peer's header blocks.
pub(crate) struct Inflater(Decompress);

impl Inflater {
    pub(crate) fn new() -> Self {
        Inflater(Decompress::new(true))
    }

    /// The headers of a compressed block.
    pub(crate) fn headers(&mut self, block: &[u8]) -> io::Result<Headers> {
        let start_in = self.0.total_in();
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            let consumed = (self.0.total_in() - start_in) as usize;
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(protocol_error("a header block is too large"));
                }
                out.reserve(out.capacity().max(256));
            }
            let before = (self.0.total_in(), self.0.total_out());
            match self
                .0
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| protocol_error(format!("set the SPDY dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(protocol_error(format!("bad header block: {e}"))),
            }
            let consumed = (self.0.total_in() - start_in) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                break;
            }
            if (self.0.total_in(), self.0.total_out()) == before {
                return Err(protocol_error("a truncated header block"));
            }
        }
        parse_headers(&out)
    }
}

fn parse_headers(raw: &[u8]) -> io::Result<Headers> {
    let mut at = 0usize;
    let mut next = |n: usize| -> io::Result<&[u8]> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= raw.len())
            .ok_or_else(|| protocol_error("a short header block"))?;
        let s = &raw[at..end];
        at = end;
        Ok(s)
    };
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = word(next(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = word(next(4)?);
        let name = String::from_utf8_lossy(next(n)?).into_owned();
        let n = word(next(4)?);
        let value = String::from_utf8_lossy(next(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// A frame as this server reads it.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    /// A new stream from the client.
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    /// The answer to a stream this side opened (only the test client reads these).
    SynReply { stream: u32, headers: Headers },
    /// Bytes on a stream.
    Data { stream: u32, fin: bool, data: Bytes },
    /// The stream is dropped.
    RstStream { stream: u32 },
    /// A ping, to be echoed.
    Ping(u32),
    /// The peer is going away.
    GoAway,
    /// Anything this server ignores (SETTINGS, WINDOW_UPDATE, HEADERS, unknown types).
    Ignored,
}

fn word(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads one frame; `None` at the end of the connection.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    inflater: &mut Inflater,
) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = (usize::from(head[5]) << 16) | (usize::from(head[6]) << 8) | usize::from(head[7]);
    let control = head[0] & 0x80 != 0;
    if control && len > MAX_CONTROL_FRAME {
        return Err(protocol_error("a control frame is too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if !control {
        return Ok(Some(Frame::Data {
            stream: word(&head[0..4]) & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
            data: Bytes::from(body),
        }));
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(protocol_error(format!("SPDY version {version} is not 3")));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let need = |n: usize| {
        if body.len() < n {
            Err(protocol_error(format!(
                "a short control frame (type {kind})"
            )))
        } else {
            Ok(())
        }
    };
    Ok(Some(match kind {
        SYN_STREAM => {
            need(10)?;
            // The block must be inflated even for streams that are refused: the zlib
            // stream runs across every block of the connection.
            let headers = inflater.headers(&body[10..])?;
            Frame::SynStream {
                stream: word(&body[0..4]) & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                headers,
            }
        }
        SYN_REPLY => {
            need(4)?;
            Frame::SynReply {
                stream: word(&body[0..4]) & 0x7fff_ffff,
                headers: inflater.headers(&body[4..])?,
            }
        }
        RST_STREAM => {
            need(8)?;
            Frame::RstStream {
                stream: word(&body[0..4]) & 0x7fff_ffff,
            }
        }
        PING => {
            need(4)?;
            Frame::Ping(word(&body[0..4]))
        }
        GOAWAY => Frame::GoAway,
        8 => {
            // HEADERS: its block still feeds the zlib stream.
            need(4)?;
            inflater.headers(&body[4..])?;
            Frame::Ignored
        }
        _ => Frame::Ignored,
    }))
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A data frame (`data` at most 2^24 - 1 bytes).
pub(crate) fn data_frame(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// A SYN_STREAM frame (for the test client).
#[cfg(test)]
pub(crate) fn syn_stream_frame(
    deflater: &mut Deflater,
    stream: u32,
    fin: bool,
    headers: &[(&str, &str)],
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    body.extend_from_slice(&stream.to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    body.extend_from_slice(&deflater.block(headers)?);
    Ok(control_frame(
        SYN_STREAM,
        if fin { FLAG_FIN } else { 0 },
        &body,
    ))
}

/// What the session's writer sends.
enum Out {
    Reply(u32),
    Data { stream: u32, fin: bool, data: Bytes },
    Rst(u32, u32),
    Ping(u32),
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    let Ok(mut deflater) = Deflater::new() else {
        return;
    };
    while let Some(out) = rx.recv().await {
        let frame = match out {
            Out::Reply(stream) => match deflater.block(&[]) {
                Ok(block) => {
                    let mut body = stream.to_be_bytes().to_vec();
                    body.extend_from_slice(&block);
                    control_frame(SYN_REPLY, 0, &body)
                }
                Err(_) => break,
            },
            Out::Data { stream, fin, data } => data_frame(stream, fin, &data),
            Out::Rst(stream, status) => {
                let mut body = stream.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control_frame(RST_STREAM, 0, &body)
            }
            Out::Ping(id) => control_frame(PING, 0, &id.to_be_bytes()),
        };
        if w.write_all(&frame).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// One forwarded connection: its two streams, as far as they have come.
#[derive(Default)]
struct Pair {
    port: Option<u16>,
    error: Option<u32>,
    data: Option<u32>,
    /// Bytes from the client's data stream, towards the pod.
    to_pod: Option<mpsc::Sender<Bytes>>,
    from_client: Option<mpsc::Receiver<Bytes>>,
    task: Option<tokio::task::AbortHandle>,
}

/// Serves one port-forward connection (SPDY over `io`) for the pod `pod` at `ip`, until
/// the client goes away.
pub(crate) async fn serve_port_forward<IO>(io: IO, ip: IpAddr, pod: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out, out_rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(write_loop(wr, out_rx));
    let mut inflater = Inflater::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // stream id -> request id
    let mut streams: HashMap<u32, String> = HashMap::new();
    loop {
        let frame = match read_frame(&mut rd, &mut inflater).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, pod = %pod, "port-forward connection ended");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                fin,
                headers,
            } => {
                let get = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                };
                let kind = get("streamtype").unwrap_or_default().to_owned();
                let request = match get("requestid") {
                    Some(r) => r.to_owned(),
                    // Clients before request ids: the data stream follows its error stream.
                    None if kind == "data" => stream.saturating_sub(2).to_string(),
                    None => stream.to_string(),
                };
                if kind != "error" && kind != "data" {
                    let _ = out.send(Out::Rst(stream, REFUSED_STREAM)).await;
                    continue;
                }
                let _ = out.send(Out::Reply(stream)).await;
                streams.insert(stream, request.clone());
                let pair = pairs.entry(request.clone()).or_default();
                let port = get("port").and_then(|p| p.parse::<u16>().ok());
                if pair.port.is_none() {
                    pair.port = port;
                }
                if kind == "error" {
                    pair.error = Some(stream);
                } else {
                    pair.data = Some(stream);
                    let (tx, rx) = mpsc::channel(64);
                    if !fin {
                        pair.to_pod = Some(tx);
                    }
                    pair.from_client = Some(rx);
                }
                if let (Some(error), Some(data), Some(rx)) =
                    (pair.error, pair.data, pair.from_client.take())
                {
                    let task = tokio::spawn(forward(
                        ip,
                        pair.port.or(port),
                        pod.clone(),
                        error,
                        data,
                        rx,
                        out.clone(),
                    ));
                    pair.task = Some(task.abort_handle());
                }
            }
            Frame::Data { stream, fin, data } => {
                let Some(pair) = streams.get(&stream).and_then(|r| pairs.get_mut(r)) else {
                    continue;
                };
                if pair.data != Some(stream) {
                    continue; // the client writes nothing on the error stream
                }
                if !data.is_empty() {
                    if let Some(tx) = &pair.to_pod {
                        if tx.send(data).await.is_err() {
                            pair.to_pod = None;
                        }
                    }
                }
                if fin {
                    pair.to_pod = None;
                }
            }
            Frame::RstStream { stream } => {
                if let Some(request) = streams.remove(&stream) {
                    let both_gone = match pairs.get_mut(&request) {
                        Some(pair) if pair.data == Some(stream) => {
                            if let Some(t) = pair.task.take() {
                                t.abort();
                            }
                            pair.to_pod = None;
                            pair.from_client = None;
                            pair.data = None;
                            pair.error.is_none_or(|e| !streams.contains_key(&e))
                        }
                        Some(pair) => {
                            pair.error = None;
                            pair.data.is_none_or(|d| !streams.contains_key(&d))
                        }
                        None => false,
                    };
                    if both_gone {
                        pairs.remove(&request);
                    }
                }
            }
            Frame::Ping(id) => {
                // Echo the client's pings (odd ids); this server sends none of its own.
                if id % 2 == 1 {
                    let _ = out.send(Out::Ping(id)).await;
                }
            }
            Frame::GoAway => break,
            Frame::SynReply { .. } | Frame::Ignored => {}
        }
    }
    for pair in pairs.values_mut() {
        if let Some(t) = pair.task.take() {
            t.abort();
        }
    }
    drop(out);
    let _ = writer.await;
}

/// Copies between the pod's `port` and the data stream; reports failures on the error
/// stream; ends both streams when the pod side ends.
async fn forward(
    ip: IpAddr,
    port: Option<u16>,
    pod: String,
    error: u32,
    data: u32,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Out>,
) {
    let fail = |message: String| {
        let out = out.clone();
        async move {
            let _ = out
                .send(Out::Data {
                    stream: error,
                    fin: true,
                    data: Bytes::from(message),
                })
                .await;
            let _ = out
                .send(Out::Data {
                    stream: data,
                    fin: true,
                    data: Bytes::new(),
                })
                .await;
        }
    };
    let Some(port) = port.filter(|p| *p > 0) else {
        fail(format!(
            "error forwarding port to pod {pod}: the port header is missing or invalid"
        ))
        .await;
        return;
    };
    let conn = match tokio::net::TcpStream::connect((ip, port)).await {
        Ok(c) => c,
        Err(e) => {
            fail(format!(
                "error forwarding port {port} to pod {pod}: failed to connect to {ip}:{port}: {e}"
            ))
            .await;
            return;
        }
    };
    let (mut r, mut w) = conn.into_split();
    let up = async move {
        while let Some(bytes) = from_client.recv().await {
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Out::Data {
                        stream: data,
                        fin: false,
                        data: Bytes::copy_from_slice(&buf[..n]),
                    };
                    if out.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        for stream in [data, error] {
            let _ = out
                .send(Out::Data {
                    stream,
                    fin: true,
                    data: Bytes::new(),
                })
                .await;
        }
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_one_of_the_draft() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        // Its Adler-32, which a zlib stream primed with it names in its header.
        let (mut a, mut b) = (1u32, 0u32);
        for byte in d {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 3_821_447_106);
    }

    #[test]
    fn header_blocks_round_trip_across_one_zlib_stream() {
        let mut deflater = Deflater::new().expect("deflater");
        let mut inflater = Inflater::new();
        for i in 0..3 {
            let port = (8000 + i).to_string();
            let block = deflater
                .block(&[("streamtype", "data"), ("port", &port), ("requestid", "0")])
                .expect("compress");
            let headers = inflater.headers(&block).expect("inflate");
            assert_eq!(headers[1], ("port".to_owned(), port));
        }
        let empty = deflater.block(&[]).expect("compress");
        assert!(inflater.headers(&empty).expect("inflate").is_empty());
    }

    #[test]
    fn garbage_header_blocks_are_errors_not_panics() {
        let mut inflater = Inflater::new();
        assert!(inflater.headers(&[1, 2, 3, 4, 5]).is_err());
        assert!(parse_headers(&[0, 0, 0, 9, 0, 0]).is_err());
        assert!(parse_headers(&[0, 0, 0, 1, 255, 255, 255, 255]).is_err());
    }

    async fn next(r: &mut (impl AsyncRead + Unpin), inflater: &mut Inflater) -> Frame {
        tokio::time::timeout(std::time::Duration::from_secs(10), read_frame(r, inflater))
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("not the end")
    }

    #[tokio::test]
    async fn a_forwarded_connection_reaches_the_port_and_ends_with_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.expect("read");
            conn.write_all(b"pong:").await.expect("write");
            conn.write_all(&buf).await.expect("write");
        });
        let (client, server) = tokio::io::duplex(64 * 1024);
        let ip: IpAddr = [127, 0, 0, 1].into();
        tokio::spawn(serve_port_forward(server, ip, "p".into()));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut deflater = Deflater::new().expect("deflater");
        let mut inflater = Inflater::new();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let f = syn_stream_frame(
                &mut deflater,
                id,
                false,
                &[("streamtype", kind), ("port", &port), ("requestid", "0")],
            )
            .expect("frame");
            wr.write_all(&f).await.expect("send");
        }
        wr.write_all(&data_frame(3, false, b"hello"))
            .await
            .expect("send");
        wr.write_all(&control_frame(PING, 0, &7u32.to_be_bytes()))
            .await
            .expect("ping");
        let mut replies = Vec::new();
        let mut received = Vec::new();
        let mut ended = Vec::new();
        let mut pinged = false;
        while ended.len() < 2 || !pinged {
            match next(&mut rd, &mut inflater).await {
                Frame::SynReply { stream, .. } => replies.push(stream),
                Frame::Data { stream, fin, data } => {
                    assert!(replies.contains(&stream), "data after the reply");
                    if stream == 3 {
                        received.extend_from_slice(&data);
                    } else {
                        assert!(data.is_empty(), "no error: {data:?}");
                    }
                    if fin {
                        ended.push(stream);
                    }
                }
                Frame::Ping(7) => pinged = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, b"pong:hello");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_on_the_error_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        drop(listener);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_port_forward(
            server,
            [127, 0, 0, 1].into(),
            "p".into(),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut deflater = Deflater::new().expect("deflater");
        let mut inflater = Inflater::new();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let f = syn_stream_frame(
                &mut deflater,
                id,
                false,
                &[("streamtype", kind), ("port", &port), ("requestid", "1")],
            )
            .expect("frame");
            wr.write_all(&f).await.expect("send");
        }
        let message = loop {
            if let Frame::Data {
                stream: 1, data, ..
            } = next(&mut rd, &mut inflater).await
            {
                break String::from_utf8_lossy(&data).into_owned();
            }
        };
        assert!(
            message.starts_with(&format!("error forwarding port {port} to pod p")),
            "{message}"
        );
    }
}
