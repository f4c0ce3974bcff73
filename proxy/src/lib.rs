//! keelson-proxy: the service proxy (`Proxy` trait, userspace and nftables proxies).
//!
//! Filled by a later issue.

pub use keelson_core as core;
