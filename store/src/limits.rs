//! Limits on keys and values, and their checks, shared by every implementation.

use crate::error::{Result, StoreError};

/// The largest value the store accepts, in bytes: etcd's default request limit (1.5 MiB)
/// less 8 KiB, so that a value at the limit with the longest key still fits in one etcd
/// request. Every implementation enforces the same limit.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024 - 8 * 1024;

/// The longest key the store accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// Checks a key (or a prefix) against the store's rules.
///
/// # Errors
/// `InvalidKey` naming what is wrong.
pub fn check_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "key is empty"
    } else if !key.starts_with('/') {
        "key must start with '/'"
    } else if key.len() > MAX_KEY_BYTES {
        "key is longer than 4096 bytes"
    } else if key.contains('\0') {
        "key contains a NUL byte"
    } else {
        return Ok(());
    };
    let mut shown: String = key.chars().take(128).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    Err(StoreError::InvalidKey { key: shown, reason })
}

/// Checks a value's size.
///
/// # Errors
/// `ValueTooLarge`.
pub fn check_value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The first key after every key that starts with `prefix` (etcd's "range end").
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_relative_and_nul_keys_are_rejected() {
        assert!(check_key("").is_err());
        assert!(check_key("registry/pods").is_err());
        assert!(check_key("/a\0b").is_err());
        assert!(check_key("/registry/core/pods/default/web").is_ok());
    }

    #[test]
    fn overlong_keys_and_values_are_rejected() {
        let long = format!("/{}", "k".repeat(MAX_KEY_BYTES));
        assert!(matches!(
            check_key(&long),
            Err(StoreError::InvalidKey { .. })
        ));
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            check_value("/k", &big),
            Err(StoreError::ValueTooLarge { .. })
        ));
        assert!(check_value("/k", &big[..MAX_VALUE_BYTES]).is_ok());
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
