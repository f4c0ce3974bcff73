//! Kubernetes quantities (`500m`, `64Mi`, `1.5G`, `2e3`) as numbers.

/// A quantity as a floating-point number of base units.
pub(crate) fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("Pi", 1024.0f64.powi(5)),
        ("Ei", 1024.0f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (s, mult) in suffixes {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    if let Some(num) = q.strip_suffix('E') {
        return num.parse::<f64>().ok().map(|n| n * 1e18);
    }
    q.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A quantity of bytes.
pub(crate) fn parse_bytes(q: &str) -> Option<u64> {
    parse(q).filter(|n| *n >= 0.0).map(|n| n.ceil() as u64)
}

/// A CPU quantity in millicores.
pub(crate) fn parse_millis(q: &str) -> Option<u64> {
    parse(q)
        .filter(|n| *n >= 0.0)
        .map(|n| (n * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_binary_and_decimal_suffixes() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_millis("500m"), Some(500));
        assert_eq!(parse_millis("2"), Some(2000));
        assert_eq!(parse_millis("0.25"), Some(250));
        assert_eq!(parse_bytes("lots"), None);
    }
}
