//! Snapshots: the whole multi-version state in one checksummed file, so that recovery
//! reads one file plus the log written after it, and old log segments can be removed.
//!
//! Layout: `magic (4) | format (4) | revision (8) | compacted (8) | key count (8)`, then per
//! key its name and its versions, then a CRC-32 of everything before it. A snapshot is
//! taken from a frozen copy of the state (the map of keys cloned, values shared, so the
//! committer pauses only for the clone), streamed to `snap-<revision>.tmp`, synced, renamed to `snap-<revision>.snap` and the
//! directory synced, so a `.snap` file is always whole; a damaged one means the disk
//! damaged it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::codec::{put_bytes, put_i64, put_u32};
use super::state::{Frozen, History, State, Version};
use super::wal;
use crate::error::{Result, StoreError};
use crate::types::Revision;

const MAGIC: u32 = 0x4b4c_534e; // "KLSN"
const FORMAT: u32 = 1;

pub(crate) fn file_name(revision: Revision) -> String {
    format!("snap-{revision:020}.snap")
}

pub(crate) fn parse_file_name(name: &str) -> Option<Revision> {
    name.strip_prefix("snap-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// Encodes the state into memory (the caller holds the state's read lock only this long).
/// Writes a frozen copy of the state as a snapshot, durably, streaming it to the file;
/// returns the snapshot's size.
pub(crate) fn write(dir: &Path, frozen: &Frozen) -> Result<u64> {
    let revision = frozen.revision;
    let tmp = dir.join(format!("snap-{revision:020}.tmp"));
    let path = dir.join(file_name(revision));
    let io = |e| StoreError::io(format!("writing snapshot {}", tmp.display()), e);
    let file = File::create(&tmp).map_err(io)?;
    let mut w = Checksummed {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    let mut buf = Vec::with_capacity(4096);
    put_u32(&mut buf, MAGIC);
    put_u32(&mut buf, FORMAT);
    put_i64(&mut buf, frozen.revision);
    put_i64(&mut buf, frozen.compacted);
    put_i64(&mut buf, frozen.keys.len() as i64);
    for (key, history) in &frozen.keys {
        put_bytes(&mut buf, key.as_bytes());
        put_u32(&mut buf, history.len() as u32);
        for v in history {
            put_i64(&mut buf, v.mod_revision);
            put_i64(&mut buf, v.create_revision);
            put_i64(&mut buf, v.version);
            match &v.value {
                Some(value) => {
                    buf.push(1);
                    put_u32(&mut buf, value.len() as u32);
                    w.write_all(&buf).map_err(io)?;
                    buf.clear();
                    w.write_all(value).map_err(io)?;
                }
                None => buf.push(0),
            }
        }
        if buf.len() > 2048 {
            w.write_all(&buf).map_err(io)?;
            buf.clear();
        }
    }
    w.write_all(&buf).map_err(io)?;
    let crc = w.crc.clone().finalize();
    w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
    let size = w.len + 4;
    let file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, &path)
        .map_err(|e| StoreError::io(format!("renaming snapshot to {}", path.display()), e))?;
    wal::sync_dir(dir)?;
    Ok(size)
}

/// A writer that checksums and counts what passes through it.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Checksummed<W> {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.len += b.len() as u64;
        self.inner.write_all(b)
    }
}

/// Loads a snapshot file into a fresh state.
/// Loads a snapshot file into a fresh state, reading it as a stream (a snapshot can be as
/// large as the data, and recovery must not hold it twice).
pub(crate) fn load(path: &Path) -> Result<State> {
    let corrupt = |what: &str| StoreError::Corrupt {
        reason: format!("snapshot {}: {what}", path.display()),
    };
    let file = File::open(path)
        .map_err(|e| StoreError::io(format!("opening snapshot {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| StoreError::io(format!("reading snapshot {}", path.display()), e))?
        .len();
    if len < 36 {
        return Err(corrupt("too short"));
    }
    let mut r = StreamReader::new(BufReader::with_capacity(1 << 20, file), len - 4, path);
    if r.u32()? != MAGIC || r.u32()? != FORMAT {
        return Err(corrupt("not a snapshot of this format"));
    }
    let mut state = State {
        revision: r.i64()?,
        compacted: r.i64()?,
        ..State::default()
    };
    let count = r.i64()?;
    if state.revision < 0
        || state.revision == i64::MAX
        || !(0..=state.revision).contains(&state.compacted)
    {
        return Err(corrupt("revisions out of range"));
    }
    let mut compactable = Vec::new();
    for _ in 0..count {
        let key: Arc<str> = Arc::from(r.string()?);
        let n = r.u32()?;
        let mut history = History::with_capacity((n as usize).min(1024));
        for _ in 0..n {
            let mod_revision = r.i64()?;
            let create_revision = r.i64()?;
            let version = r.i64()?;
            let value = match r.u8()? {
                0 => None,
                _ => Some(Bytes::from(r.vec()?)),
            };
            let v = Version {
                mod_revision,
                create_revision,
                version,
                value,
            };
            let ordered = history
                .last()
                .is_none_or(|p: &Version| p.mod_revision < v.mod_revision);
            if !ordered || v.mod_revision <= 0 || v.mod_revision > state.revision {
                return Err(corrupt(
                    "versions out of order or beyond the snapshot's revision",
                ));
            }
            if !history.is_empty() || v.value.is_none() {
                compactable.push((v.mod_revision, key.clone()));
            }
            history.push(v);
        }
        state.keys.insert(key, history);
    }
    r.finish()?;
    compactable.sort_unstable_by_key(|(rev, _)| *rev);
    state.compactable = compactable.into();
    Ok(state)
}

/// Reads a snapshot's body from a stream, checksumming as it goes.
struct StreamReader<'p, R> {
    inner: R,
    crc: crc32fast::Hasher,
    /// Body bytes not read yet (the trailing checksum excluded).
    remaining: u64,
    path: &'p Path,
}

impl<'p, R: Read> StreamReader<'p, R> {
    fn new(inner: R, body: u64, path: &'p Path) -> Self {
        StreamReader {
            inner,
            crc: crc32fast::Hasher::new(),
            remaining: body,
            path,
        }
    }

    fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Corrupt {
            reason: format!("snapshot {}: {what}", self.path.display()),
        }
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        StoreError::io(format!("reading snapshot {}", self.path.display()), e)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        if (buf.len() as u64) > self.remaining {
            return Err(self.corrupt("truncated"));
        }
        self.inner.read_exact(buf).map_err(|e| self.io(e))?;
        self.crc.update(buf);
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn vec(&mut self) -> Result<Vec<u8>> {
        let n = u64::from(self.u32()?);
        if n > self.remaining {
            return Err(self.corrupt("truncated"));
        }
        let mut v = vec![0; n as usize];
        self.fill(&mut v)?;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.vec()?).map_err(|_| self.corrupt("a key is not UTF-8"))
    }

    /// Checks that the body is all read and matches the trailing checksum.
    fn finish(mut self) -> Result<()> {
        if self.remaining != 0 {
            return Err(self.corrupt("trailing bytes"));
        }
        let mut sum = [0; 4];
        self.inner.read_exact(&mut sum).map_err(|e| self.io(e))?;
        if self.crc.clone().finalize().to_le_bytes() != sum {
            return Err(self.corrupt("checksum mismatch"));
        }
        Ok(())
    }
}
