//! Container log files in the CRI format (`<RFC 3339 time> <stream> <F|P> <text>`, one
//! record a line), size-based rotation, and reading them back with tail, since,
//! timestamps and follow.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use keelson_core::k8s_openapi::jiff::Timestamp;

use super::{LogOptions, LogStream};
use crate::error::RuntimeError;

/// Partial lines longer than this are written as a `P` record.
const MAX_PARTIAL: usize = 16 * 1024;

/// Appends CRI records to a log file, rotating it by size: `path` is the current file,
/// `path.1` the one before, up to `path.<keep>`.
pub(crate) struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_size: u64,
    keep: usize,
    partial: [Vec<u8>; 2],
}

/// Which stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A `SystemTime` as a jiff `Timestamp` (the epoch for times before it).
pub(crate) fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp::new(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
    .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A jiff `Timestamp` as a `SystemTime` (the epoch for times before it).
pub(crate) fn from_timestamp(t: Timestamp) -> SystemTime {
    let secs = u64::try_from(t.as_second()).unwrap_or(0);
    let nanos = u32::try_from(t.subsec_nanosecond()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

pub(crate) fn now_rfc3339(t: SystemTime) -> String {
    to_timestamp(t).to_string()
}

impl LogWriter {
    /// Opens (appending to) the log at `path`.
    pub(crate) fn open(path: &Path, max_size: u64, keep: usize) -> Result<LogWriter, RuntimeError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RuntimeError::io("open the log", path, e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogWriter {
            path: path.to_owned(),
            file,
            size,
            max_size: max_size.max(1024),
            keep: keep.max(1),
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Writes bytes read from a stream: whole lines as `F` records; a trailing partial
    /// line waits for its end (or is written as `P` when long).
    pub(crate) fn write(&mut self, stream: Stream, data: &[u8]) {
        let mut buf = std::mem::take(&mut self.partial[stream as usize]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = buf[start..start + pos].to_vec();
            self.record(stream, 'F', &line);
            start += pos + 1;
        }
        let rest = buf[start..].to_vec();
        if rest.len() > MAX_PARTIAL {
            self.record(stream, 'P', &rest);
        } else {
            self.partial[stream as usize] = rest;
        }
    }

    /// Writes what is left of partial lines (the stream ended).
    pub(crate) fn flush(&mut self, stream: Stream) {
        let rest = std::mem::take(&mut self.partial[stream as usize]);
        if !rest.is_empty() {
            self.record(stream, 'F', &rest);
        }
    }

    fn record(&mut self, stream: Stream, tag: char, line: &[u8]) {
        let mut out = Vec::with_capacity(line.len() + 48);
        out.extend_from_slice(now_rfc3339(SystemTime::now()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.push(b' ');
        out.push(tag as u8);
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        if let Err(e) = self.file.write_all(&out) {
            tracing::warn!(path = %self.path.display(), error = %e, "failed to write a log record");
            return;
        }
        self.size += out.len() as u64;
        if self.size >= self.max_size {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.file = f;
                self.size = 0;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "failed to rotate a log")
            }
        }
    }
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// One record read back.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub(crate) time: Timestamp,
    pub(crate) partial: bool,
    pub(crate) text: Vec<u8>,
}

fn parse_line(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default().to_vec();
    Some(Record {
        time,
        partial: tag == b"P",
        text,
    })
}

fn parse_all(data: &[u8]) -> Vec<Record> {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

fn render(r: &Record, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(r.time.to_string().as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&r.text);
    if !r.partial {
        out.push(b'\n');
    }
}

fn since_ok(r: &Record, since: Option<SystemTime>) -> bool {
    since.is_none_or(|s| from_timestamp(r.time) >= s)
}

/// Reads the log at `path` (and its rotated files) per `options`. With `follow`, the
/// stream polls the file for new records until `done()` and nothing more is there.
pub(crate) fn read_log(
    path: &Path,
    keep: usize,
    options: &LogOptions,
    done: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<LogStream, RuntimeError> {
    let mut data = Vec::new();
    for i in (1..=keep).rev() {
        if let Ok(d) = std::fs::read(rotated(path, i)) {
            data.extend_from_slice(&d);
        }
    }
    let current = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RuntimeError::io("read the log", path, e)),
    };
    // Only whole lines; the rest is read again when following.
    let whole = current
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    data.extend_from_slice(&current[..whole]);
    let mut records: Vec<Record> = parse_all(&data)
        .into_iter()
        .filter(|r| since_ok(r, options.since))
        .collect();
    if let Some(n) = options.tail_lines {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    let mut first = Vec::new();
    for r in &records {
        render(r, options.timestamps, &mut first);
    }
    let mut budget = options.limit_bytes;
    if let Some(limit) = budget {
        first.truncate(limit);
        budget = Some(limit - first.len());
    }
    let head = stream::iter((!first.is_empty()).then_some(Ok(first)));
    if !options.follow || budget == Some(0) {
        return Ok(head.boxed());
    }
    let state = Follow {
        path: path.to_owned(),
        offset: whole as u64,
        pending: Vec::new(),
        options: options.clone(),
        budget,
        done,
        finished: false,
    };
    let tail = stream::unfold(state, |mut st| async move {
        loop {
            if st.finished {
                return None;
            }
            let finished = (st.done)();
            let chunk = st.poll();
            if !chunk.is_empty() {
                return Some((Ok(chunk), st));
            }
            if finished || st.budget == Some(0) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(head.chain(tail).boxed())
}

struct Follow {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
    options: LogOptions,
    budget: Option<usize>,
    done: Arc<dyn Fn() -> bool + Send + Sync>,
    finished: bool,
}

impl Follow {
    fn poll(&mut self) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rotated: start the new file from its beginning.
            self.offset = 0;
            self.pending.clear();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.take(len - self.offset).read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.pending.extend_from_slice(&buf);
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let whole: Vec<u8> = self.pending.drain(..=end).collect();
        let mut out = Vec::new();
        for r in parse_all(&whole) {
            if since_ok(&r, self.options.since) {
                render(&r, self.options.timestamps, &mut out);
            }
        }
        if let Some(b) = self.budget {
            out.truncate(b);
            self.budget = Some(b - out.len());
            if self.budget == Some(0) {
                self.finished = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: LogStream) -> String {
        let chunks: Vec<_> = futures::executor::block_on(s.collect::<Vec<_>>());
        let mut out = Vec::new();
        for c in chunks {
            out.extend(c.expect("chunk"));
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn records_rotate_by_size_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, 1024, 3).expect("open");
        for i in 0..60 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        assert!(rotated(&path, 1).exists(), "the log rotated");
        assert!(
            !rotated(&path, 4).exists(),
            "at most 3 rotated files are kept"
        );
        let all =
            collect(read_log(&path, 3, &LogOptions::default(), Arc::new(|| true)).expect("read"));
        assert!(all.ends_with("line 58\nline 59\n"), "{all}");
        let tail = collect(
            read_log(
                &path,
                3,
                &LogOptions {
                    tail_lines: Some(2),
                    ..LogOptions::default()
                },
                Arc::new(|| true),
            )
            .expect("read"),
        );
        assert_eq!(tail, "line 58\nline 59\n");
    }

    #[test]
    fn partial_lines_wait_for_their_end_and_timestamps_prefix_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path, 1 << 20, 1).expect("open");
        w.write(Stream::Stdout, b"hel");
        w.write(Stream::Stderr, b"oops\n");
        w.write(Stream::Stdout, b"lo\nwor");
        w.flush(Stream::Stdout);
        let plain =
            collect(read_log(&path, 1, &LogOptions::default(), Arc::new(|| true)).expect("read"));
        assert_eq!(plain, "oops\nhello\nwor\n");
        let stamped = collect(
            read_log(
                &path,
                1,
                &LogOptions {
                    timestamps: true,
                    limit_bytes: Some(1000),
                    ..LogOptions::default()
                },
                Arc::new(|| true),
            )
            .expect("read"),
        );
        let first = stamped.lines().next().expect("a line");
        let (ts, text) = first.split_once(' ').expect("timestamp and text");
        assert!(ts.parse::<Timestamp>().is_ok(), "{ts}");
        assert_eq!(text, "oops");
        let future = SystemTime::now() + Duration::from_secs(60);
        let none = collect(
            read_log(
                &path,
                1,
                &LogOptions {
                    since: Some(future),
                    ..LogOptions::default()
                },
                Arc::new(|| true),
            )
            .expect("read"),
        );
        assert_eq!(none, "");
    }
}
