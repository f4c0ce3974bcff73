//! Continue tokens for paginated lists, shared by every implementation.
//!
//! A token records the list's revision, the list's prefix (as a checksum) and the key to
//! start from (relative to the prefix). It is URL-safe base64 of a small binary record that
//! ends with a CRC-32 of the rest, so a token from another list or one altered by hand is
//! refused with a clear error instead of silently reading the wrong range. It is not a
//! secret and not signed: it only lets the caller read what a list of the same prefix could.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::{Result, StoreError};
use crate::types::Revision;

const VERSION: u8 = 1;

/// The decoded content of a continue token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContinueToken {
    /// The revision every page of the list is read at.
    pub revision: Revision,
    /// The first key of the next page, relative to the list's prefix.
    pub start_suffix: String,
}

impl ContinueToken {
    /// The full key to start the next page from.
    pub fn start_key(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.start_suffix)
    }
}

/// Encodes a token for a list of `prefix` at `revision` whose next page starts at `next_key`.
pub(crate) fn encode(prefix: &str, revision: Revision, next_key: &str) -> String {
    let suffix = next_key.strip_prefix(prefix).unwrap_or(next_key);
    let mut buf = Vec::with_capacity(1 + 8 + 4 + suffix.len() + 4);
    buf.push(VERSION);
    buf.extend_from_slice(&revision.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(prefix.as_bytes()).to_le_bytes());
    buf.extend_from_slice(suffix.as_bytes());
    let sum = crc32fast::hash(&buf);
    buf.extend_from_slice(&sum.to_le_bytes());
    URL_SAFE_NO_PAD.encode(buf)
}

/// The token of a list's options, decoded and checked; an empty token counts as none.
///
/// # Errors
/// `InvalidContinue`, as [`decode`].
pub(crate) fn from_options(
    prefix: &str,
    options: &crate::ListOptions,
) -> Result<Option<ContinueToken>> {
    options
        .continue_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| decode(prefix, t))
        .transpose()
}

/// Decodes and checks a token for a list of `prefix`.
///
/// # Errors
/// `InvalidContinue` for anything that is not a token this store issued for this prefix.
pub(crate) fn decode(prefix: &str, token: &str) -> Result<ContinueToken> {
    let invalid = |reason: &str| StoreError::InvalidContinue {
        reason: reason.to_owned(),
    };
    let buf = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid("not valid base64"))?;
    if buf.len() < 1 + 8 + 4 + 4 {
        return Err(invalid("too short"));
    }
    let (body, sum) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != sum {
        return Err(invalid("checksum mismatch: the token was altered"));
    }
    if body[0] != VERSION {
        return Err(invalid("unknown token version"));
    }
    let revision =
        Revision::from_le_bytes(body[1..9].try_into().map_err(|_| invalid("too short"))?);
    let prefix_sum = u32::from_le_bytes(body[9..13].try_into().map_err(|_| invalid("too short"))?);
    if prefix_sum != crc32fast::hash(prefix.as_bytes()) {
        return Err(invalid("the token belongs to a list of another prefix"));
    }
    if revision <= 0 {
        return Err(invalid("revision out of range"));
    }
    let start_suffix =
        String::from_utf8(body[13..].to_vec()).map_err(|_| invalid("key is not UTF-8"))?;
    Ok(ContinueToken {
        revision,
        start_suffix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips() {
        let t = encode(
            "/registry/core/pods/",
            42,
            "/registry/core/pods/default/web-7",
        );
        let d = decode("/registry/core/pods/", &t).expect("valid");
        assert_eq!(d.revision, 42);
        assert_eq!(
            d.start_key("/registry/core/pods/"),
            "/registry/core/pods/default/web-7"
        );
    }

    #[test]
    fn a_token_from_another_list_is_refused() {
        let t = encode("/registry/core/pods/", 42, "/registry/core/pods/a");
        let err = decode("/registry/core/services/", &t).expect_err("other prefix");
        assert!(err.to_string().contains("another prefix"), "{err}");
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let t = encode("/p/", 42, "/p/a");
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        raw[2] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(raw);
        assert!(matches!(
            decode("/p/", &tampered),
            Err(StoreError::InvalidContinue { .. })
        ));
        assert!(matches!(
            decode("/p/", "%%%"),
            Err(StoreError::InvalidContinue { .. })
        ));
        assert!(matches!(
            decode("/p/", ""),
            Err(StoreError::InvalidContinue { .. })
        ));
    }
}
