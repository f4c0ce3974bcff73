//! The byte layouts of the log and the snapshots: little-endian integers and
//! length-prefixed byte strings, with a reader that never reads past its input.

use bytes::Bytes;

use super::state::Version;
use crate::types::Revision;

pub(crate) fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    // Keys and values are bounded far below 4 GiB by the store's limits.
    put_u32(buf, b.len() as u32);
    buf.extend_from_slice(b);
}

/// Reads the layouts above; every method returns `None` at the end of the input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// One change in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A version of a key (a tombstone when `version.value` is `None`).
    Write { key: String, version: Version },
    /// A compaction to this revision.
    Compact { revision: Revision },
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_COMPACT: u8 = 3;

pub(crate) fn encode_write(buf: &mut Vec<u8>, key: &str, v: &Version) {
    match &v.value {
        Some(value) => {
            buf.push(TAG_PUT);
            put_i64(buf, v.mod_revision);
            put_i64(buf, v.create_revision);
            put_i64(buf, v.version);
            put_bytes(buf, key.as_bytes());
            put_bytes(buf, value);
        }
        None => {
            buf.push(TAG_DELETE);
            put_i64(buf, v.mod_revision);
            put_bytes(buf, key.as_bytes());
        }
    }
}

pub(crate) fn encode_compact(buf: &mut Vec<u8>, revision: Revision) {
    buf.push(TAG_COMPACT);
    put_i64(buf, revision);
}

pub(crate) fn decode_entry(r: &mut Reader<'_>) -> Option<Entry> {
    match r.u8()? {
        TAG_PUT => {
            let mod_revision = r.i64()?;
            let create_revision = r.i64()?;
            let version = r.i64()?;
            let key = r.str()?.to_owned();
            let value = Some(Bytes::copy_from_slice(r.bytes()?));
            Some(Entry::Write {
                key,
                version: Version {
                    mod_revision,
                    create_revision,
                    version,
                    value,
                },
            })
        }
        TAG_DELETE => {
            let mod_revision = r.i64()?;
            let key = r.str()?.to_owned();
            Some(Entry::Write {
                key,
                version: Version {
                    mod_revision,
                    create_revision: 0,
                    version: 0,
                    value: None,
                },
            })
        }
        TAG_COMPACT => Some(Entry::Compact { revision: r.i64()? }),
        _ => None,
    }
}
