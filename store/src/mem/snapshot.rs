//! Snapshots: the whole multi-version state in one checksummed file, so that recovery
//! reads one file plus the log written after it, and old log segments can be removed.
//!
//! Layout: `magic (4) | format (4) | revision (8) | compacted (8) | key count (8)`, then per
//! key its name and its versions, then a CRC-32 of everything before it. A snapshot is
//! written to `snap-<revision>.tmp`, synced, renamed to `snap-<revision>.snap` and the
//! directory synced, so a `.snap` file is always whole; a damaged one means the disk
//! damaged it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::codec::{put_bytes, put_i64, put_u32, Reader};
use super::state::{History, State, Version};
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
pub(crate) fn encode(state: &State) -> Vec<u8> {
    let size: usize = state
        .keys
        .iter()
        .map(|(k, h)| {
            k.len()
                + 8
                + h.iter()
                    .map(|v| 40 + v.value.as_ref().map_or(0, Bytes::len))
                    .sum::<usize>()
        })
        .sum();
    let mut buf = Vec::with_capacity(size + 64);
    put_u32(&mut buf, MAGIC);
    put_u32(&mut buf, FORMAT);
    put_i64(&mut buf, state.revision);
    put_i64(&mut buf, state.compacted);
    put_i64(&mut buf, state.keys.len() as i64);
    for (key, history) in &state.keys {
        put_bytes(&mut buf, key.as_bytes());
        put_u32(&mut buf, history.len() as u32);
        for v in history {
            put_i64(&mut buf, v.mod_revision);
            put_i64(&mut buf, v.create_revision);
            put_i64(&mut buf, v.version);
            match &v.value {
                Some(value) => {
                    buf.push(1);
                    put_bytes(&mut buf, value);
                }
                None => buf.push(0),
            }
        }
    }
    let crc = crc32fast::hash(&buf);
    put_u32(&mut buf, crc);
    buf
}

/// Writes an encoded snapshot durably; returns its path.
pub(crate) fn write(dir: &Path, revision: Revision, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!("snap-{revision:020}.tmp"));
    let path = dir.join(file_name(revision));
    let io = |e| StoreError::io(format!("writing snapshot {}", tmp.display()), e);
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path)
        .map_err(|e| StoreError::io(format!("renaming snapshot to {}", path.display()), e))?;
    wal::sync_dir(dir)?;
    Ok(path)
}

/// Loads a snapshot file into a fresh state.
pub(crate) fn load(path: &Path) -> Result<State> {
    let buf = wal::read_file(path)?;
    let corrupt = |what: &str| StoreError::Corrupt {
        reason: format!("snapshot {}: {what}", path.display()),
    };
    if buf.len() < 36 {
        return Err(corrupt("too short"));
    }
    let (body, sum) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader::new(body);
    if r.u32() != Some(MAGIC) || r.u32() != Some(FORMAT) {
        return Err(corrupt("not a snapshot of this format"));
    }
    let mut state = State::default();
    let short = || corrupt("truncated");
    state.revision = r.i64().ok_or_else(short)?;
    state.compacted = r.i64().ok_or_else(short)?;
    let count = r.i64().ok_or_else(short)?;
    if state.revision < 0
        || state.revision == i64::MAX
        || !(0..=state.revision).contains(&state.compacted)
    {
        return Err(corrupt("revisions out of range"));
    }
    let mut compactable = Vec::new();
    for _ in 0..count {
        let key: Arc<str> = Arc::from(r.str().ok_or_else(short)?);
        let n = r.u32().ok_or_else(short)?;
        let mut history = History::with_capacity((n as usize).min(1024));
        for _ in 0..n {
            let mod_revision = r.i64().ok_or_else(short)?;
            let create_revision = r.i64().ok_or_else(short)?;
            let version = r.i64().ok_or_else(short)?;
            let value = match r.u8().ok_or_else(short)? {
                0 => None,
                _ => Some(Bytes::copy_from_slice(r.bytes().ok_or_else(short)?)),
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
    if !r.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    compactable.sort_unstable_by_key(|(rev, _)| *rev);
    state.compactable = compactable.into();
    Ok(state)
}
