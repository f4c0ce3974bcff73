//! The write-ahead log: segment files of checksummed records, one record per commit group.
//!
//! A record is `magic (4) | length (4) | crc32 (4) | payload`, the CRC covering the length
//! and the payload. The payload is a count followed by that many entries (see `codec`).
//! A group is acknowledged only after its whole record is written and `fdatasync`ed, so a
//! crash can leave at most one partial record, at the end of the newest segment; recovery
//! cuts it off. A damaged record with a whole record after it is not a torn tail but damage
//! to acknowledged data: recovery refuses to open rather than drop it silently.
//!
//! Segments are named `wal-<first revision>.log` (20 digits). A new segment starts after
//! every snapshot; segments wholly covered by a durable snapshot are removed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, Entry, Reader};
use crate::error::{Result, StoreError};
use crate::types::Revision;

const MAGIC: u32 = 0x4b4c_5357; // "KLSW"
const HEADER: usize = 12;

/// Builds one record from entries.
pub(crate) struct RecordBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl RecordBuilder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.resize(HEADER + 4, 0);
        RecordBuilder { buf, count: 0 }
    }

    pub fn clear(&mut self) {
        self.buf.truncate(HEADER + 4);
        self.count = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn body(&mut self) -> &mut Vec<u8> {
        self.count += 1;
        &mut self.buf
    }

    /// The record's size so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Gives back the memory of an unusually large record.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::with_capacity(4096);
            self.buf.resize(HEADER + 4, 0);
            self.count = 0;
        }
    }

    /// Seals the record and returns its bytes.
    ///
    /// # Errors
    /// `Io` when the record is too large for its length field (the committer keeps groups
    /// far below that).
    pub fn finish(&mut self) -> Result<&[u8]> {
        let payload_len = u32::try_from(self.buf.len() - HEADER).map_err(|_| {
            StoreError::io(
                "sealing a log record",
                std::io::Error::other("record over 4 GiB"),
            )
        })?;
        self.buf[HEADER..HEADER + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&self.buf[4..8]);
        h.update(&self.buf[HEADER..]);
        let crc = h.finalize();
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        Ok(&self.buf)
    }
}

/// The state of a segment's end after a scan.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The file ends with a whole record (or is empty).
    Clean,
    /// The file ends with `bytes` bytes that are not a whole record, and no whole record
    /// follows them: a write that was cut short.
    Torn { offset: u64, bytes: u64 },
    /// A damaged record at `offset` is followed by a whole one.
    Damaged { offset: u64 },
}

/// Reads the record at the start of `buf`: its payload and total length.
fn record_at(buf: &[u8]) -> Option<(&[u8], usize)> {
    let mut r = Reader::new(buf);
    if r.u32()? != MAGIC {
        return None;
    }
    let len = r.u32()? as usize;
    let crc = r.u32()?;
    let payload = r.take(len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[4..8]);
    h.update(payload);
    (h.finalize() == crc).then_some((payload, HEADER + len))
}

/// Splits a segment's bytes into the payloads of its whole records and the state of its tail.
pub(crate) fn scan(buf: &[u8]) -> (Vec<&[u8]>, Tail) {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match record_at(&buf[pos..]) {
            Some((payload, len)) => {
                records.push(payload);
                pos += len;
            }
            None => {
                // Is there a whole record anywhere after this point?
                let damaged = (pos + 1..buf.len().saturating_sub(HEADER - 1))
                    .filter(|&p| buf[p..p + 4] == MAGIC.to_le_bytes())
                    .any(|p| record_at(&buf[p..]).is_some());
                let tail = if damaged {
                    Tail::Damaged { offset: pos as u64 }
                } else {
                    Tail::Torn {
                        offset: pos as u64,
                        bytes: (buf.len() - pos) as u64,
                    }
                };
                return (records, tail);
            }
        }
    }
    (records, Tail::Clean)
}

/// Decodes a record's payload into its entries.
pub(crate) fn entries(payload: &[u8]) -> Option<Vec<Entry>> {
    let mut r = Reader::new(payload);
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        out.push(codec::decode_entry(&mut r)?);
    }
    r.is_empty().then_some(out)
}

pub(crate) fn segment_name(first: Revision) -> String {
    format!("wal-{first:020}.log")
}

/// Parses a segment file name back into its first revision.
pub(crate) fn parse_segment_name(name: &str) -> Option<Revision> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The segment being appended to.
pub(crate) struct Segment {
    file: File,
    /// A second handle on `file`, shared with the thread that syncs it.
    sync: std::sync::Arc<File>,
    pub path: PathBuf,
    pub len: u64,
}

impl Segment {
    /// Creates a new, empty segment and makes its name durable.
    pub fn create(dir: &Path, first: Revision) -> Result<Segment> {
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("creating log segment {}", path.display()), e))?;
        sync_dir(dir)?;
        Segment::new(file, path, 0)
    }

    /// Opens an existing segment for appending, cutting it to `len` bytes (its whole records).
    pub fn reopen(path: PathBuf, len: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening log segment {}", path.display()), e))?;
        let on_disk = file.metadata().map(|m| m.len()).unwrap_or(len);
        if on_disk != len {
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(|e| {
                    StoreError::io(format!("truncating log segment {}", path.display()), e)
                })?;
        }
        let mut seg = Segment::new(file, path, len)?;
        seg.seek_end()?;
        Ok(seg)
    }

    fn new(file: File, path: PathBuf, len: u64) -> Result<Segment> {
        let sync = file
            .try_clone()
            .map(std::sync::Arc::new)
            .map_err(|e| StoreError::io(format!("opening log segment {}", path.display()), e))?;
        Ok(Segment {
            file,
            sync,
            path,
            len,
        })
    }

    fn seek_end(&mut self) -> Result<()> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map(|_| ())
            .map_err(|e| {
                StoreError::io(format!("seeking in log segment {}", self.path.display()), e)
            })
    }

    /// Appends a record, without waiting for the disk: [`Segment::syncer`]'s handle makes it
    /// durable. On a write error the segment is cut back to its previous length, so it still
    /// ends with a whole record, and the caller may go on; when that cut itself fails the
    /// error is `Fatal`: the log's end is unknown, so the caller must stop accepting writes.
    pub fn write(&mut self, record: &[u8]) -> std::result::Result<(), AppendError> {
        if let Err(e) = self.file.write_all(record) {
            let restored = self.file.set_len(self.len).is_ok()
                && self.file.sync_data().is_ok()
                && self.seek_end().is_ok();
            let err = StoreError::io(format!("writing to log segment {}", self.path.display()), e);
            return Err(if restored {
                AppendError::Retryable(err)
            } else {
                AppendError::Fatal(err)
            });
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// A handle on this segment's file for `fdatasync`, which may run on another thread
    /// while later records are written.
    pub fn syncer(&self) -> &std::sync::Arc<File> {
        &self.sync
    }
}

/// `fdatasync` on a segment, with the error the committer reports: a failed sync is
/// `Fatal` (the kernel may have dropped the data).
pub(crate) fn sync(file: &File, path: &Path) -> std::result::Result<(), AppendError> {
    file.sync_data().map_err(|e| {
        AppendError::Fatal(StoreError::io(
            format!("syncing log segment {}", path.display()),
            e,
        ))
    })
}

/// Why an append failed.
pub(crate) enum AppendError {
    /// Nothing was written; the log is as it was.
    Retryable(StoreError),
    /// The log's state on disk is unknown; no further write may be acknowledged.
    Fatal(StoreError),
}

/// Reads a whole file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> Vec<u8> {
        let mut b = RecordBuilder::new();
        codec::encode_compact(b.body(), i64::from(n));
        b.finish().expect("small record").to_vec()
    }

    #[test]
    fn whole_records_scan_clean() {
        let buf = [record(1), record(2)].concat();
        let (recs, tail) = scan(&buf);
        assert_eq!(recs.len(), 2);
        assert_eq!(tail, Tail::Clean);
        assert_eq!(entries(recs[1]), Some(vec![Entry::Compact { revision: 2 }]));
    }

    #[test]
    fn a_cut_short_last_record_is_a_torn_tail() {
        let mut buf = [record(1), record(2)].concat();
        let whole = record(1).len();
        buf.truncate(buf.len() - 3);
        let (recs, tail) = scan(&buf);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            tail,
            Tail::Torn {
                offset: whole as u64,
                bytes: (buf.len() - whole) as u64
            }
        );
        // Zeros after the last record (a file extended but never written) are a torn tail too.
        let mut zeros = record(1);
        zeros.extend_from_slice(&[0; 100]);
        assert!(matches!(scan(&zeros).1, Tail::Torn { .. }));
    }

    #[test]
    fn damage_before_a_whole_record_is_reported_as_damage() {
        let mut buf = [record(1), record(2), record(3)].concat();
        let at = record(1).len() + HEADER + 2;
        buf[at] ^= 0xff;
        let (recs, tail) = scan(&buf);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            tail,
            Tail::Damaged {
                offset: record(1).len() as u64
            }
        );
    }
}
