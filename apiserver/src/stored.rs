//! Objects as the store holds them, turned into what clients see without decoding them.
//!
//! The registry stores an object's JSON without its `resourceVersion` (the store's revision
//! of the write is the version). A whole list or a single read served from the watch
//! cache writes each object's stored bytes with `"resourceVersion":"<revision>"` spliced in
//! as the first field of its `metadata`, so the server copies bytes instead of decoding and
//! re-encoding every object. Only a top-level scan of the JSON is needed to find where
//! `metadata` starts; anything unexpected (not an object, no `metadata` object, another
//! version's `apiVersion`, a stored `resourceVersion`) is left to the decoding path.

use keelson_core::ResourceType;

/// Appends the object stored as `value` at `revision` to `out` as clients see it (with its
/// `resourceVersion`). Returns `false`, with `out` unchanged, when the bytes need decoding
/// instead (see the module docs).
pub(crate) fn write_with_version(
    rt: &ResourceType,
    value: &[u8],
    revision: i64,
    out: &mut Vec<u8>,
) -> bool {
    let Some(at) = metadata_start(rt, value) else {
        return false;
    };
    let mut number = itoa_buf(revision);
    let digits = number.digits();
    out.reserve(value.len() + digits.len() + 24);
    out.extend_from_slice(&value[..at]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(digits);
    out.push(b'"');
    if value[at..].iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(&value[at..]);
    true
}

/// The offset just after the `{` that opens the top-level `metadata` object, when the
/// object's `apiVersion` is `rt`'s and its metadata has no `resourceVersion`.
fn metadata_start(rt: &ResourceType, value: &[u8]) -> Option<usize> {
    let mut s = Scanner { b: value, i: 0 };
    s.expect(b'{')?;
    let (mut metadata, mut api_version_ok) = (None, false);
    if s.peek()? == b'}' {
        return None;
    }
    loop {
        let key = s.string()?;
        s.expect(b':')?;
        match key {
            b"metadata" => {
                s.ws();
                if s.peek()? != b'{' {
                    return None;
                }
                let start = s.i + 1;
                if s.object_has_key(b"resourceVersion")? {
                    return None;
                }
                metadata = Some(start);
            }
            b"apiVersion" => {
                s.ws();
                let v = s.string()?;
                api_version_ok =
                    std::str::from_utf8(v).is_ok_and(|v| crate::registry::is_api_version(v, rt));
            }
            _ => s.skip_value()?,
        }
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    metadata.filter(|_| api_version_ok)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// The next byte that is not whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// A string's raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(&self.b[start..self.i - 1]);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }

    /// Skips one value of any kind.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => self.i += 1,
                    }
                }
            }
            _ => {
                while !matches!(self.b.get(self.i)?, b',' | b'}' | b']') {
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    /// Scans the object that starts here; whether it has `key` at its top level.
    fn object_has_key(&mut self, key: &[u8]) -> Option<bool> {
        self.expect(b'{')?;
        let mut found = false;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(false);
        }
        loop {
            found |= self.string()? == key;
            self.expect(b':')?;
            self.skip_value()?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(found),
                _ => return None,
            }
        }
    }
}

/// A revision's decimal digits, without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn digits(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(n: i64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    // Revisions are never negative; a negative one is written as 0.
    let mut n = n.max(0) as u64;
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::apps::v1::Deployment;
    use keelson_core::k8s_openapi::api::core::v1::Pod;
    use keelson_core::Resource;
    use serde_json::{json, Value};

    fn spliced(rt: &ResourceType, value: &Value, revision: i64) -> Option<Value> {
        let bytes = serde_json::to_vec(value).expect("encode");
        let mut out = b"prefix".to_vec();
        if !write_with_version(rt, &bytes, revision, &mut out) {
            assert_eq!(out, b"prefix", "nothing written when refused");
            return None;
        }
        assert!(out.starts_with(b"prefix"));
        Some(serde_json::from_slice(&out[6..]).expect("valid JSON"))
    }

    #[test]
    fn the_version_goes_into_metadata_and_nothing_else_changes() {
        let rt = Pod::resource_type();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "annotations": {"x": "\"metadata\":{", "y": "a\\\"b"}},
            "spec": {"containers": [{"name": "c", "args": ["}", "]", "{\"q\":1}"]}]},
            "status": {"phase": "Pending", "n": -1.5e3, "t": true, "z": null}});
        let got = spliced(&rt, &pod, 1234567).expect("spliced");
        let mut want = pod.clone();
        want["metadata"]["resourceVersion"] = json!("1234567");
        assert_eq!(got, want);
    }

    #[test]
    fn empty_metadata_and_whitespace() {
        let rt = Pod::resource_type();
        let mut out = Vec::new();
        let text = br#" { "apiVersion" : "v1" , "metadata" : { } } "#;
        assert!(write_with_version(&rt, text, 7, &mut out));
        let got: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            got,
            json!({"apiVersion": "v1", "metadata": {"resourceVersion": "7"}})
        );
    }

    #[test]
    fn what_needs_decoding_is_refused() {
        let pods = Pod::resource_type();
        let deployments = Deployment::resource_type();
        // Another version's apiVersion, no apiVersion, no metadata, a stored version.
        assert!(spliced(
            &deployments,
            &json!({"apiVersion": "apps/v1beta2", "metadata": {}}),
            1
        )
        .is_none());
        assert!(spliced(
            &deployments,
            &json!({"apiVersion": "apps/v1", "metadata": {}}),
            1
        )
        .is_some());
        assert!(spliced(&pods, &json!({"metadata": {"name": "a"}}), 1).is_none());
        assert!(spliced(&pods, &json!({"apiVersion": "v1"}), 1).is_none());
        assert!(spliced(&pods, &json!({"apiVersion": "v1", "metadata": []}), 1).is_none());
        assert!(spliced(
            &pods,
            &json!({"apiVersion": "v1", "metadata": {"resourceVersion": "3"}}),
            1
        )
        .is_none());
        // Not an object, or truncated.
        for bad in [
            &b"[]"[..],
            b"",
            b"{",
            b"{\"apiVersion\":\"v1\",\"metadata\":{",
            b"{\"a\"",
            b"nul",
        ] {
            assert!(
                !write_with_version(&pods, bad, 1, &mut Vec::new()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn revisions_are_written_in_decimal() {
        for n in [0i64, 9, 10, 99, 1_000_000, i64::MAX] {
            assert_eq!(itoa_buf(n).digits(), n.to_string().as_bytes());
        }
    }
}
