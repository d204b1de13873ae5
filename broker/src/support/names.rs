//! [`NameCodec`]: how a name (room, user, device, node, namespace, cid)
//! becomes one token of a broker's key, channel, subject, topic or queue.
//!
//! A few bytes stay as they are; every other byte becomes a marker and two
//! uppercase hex digits. So no name can add a separator or a wildcard of the
//! broker's syntax (`.`, `*`, `>`, `#`, `{}`, `:`, `/`, spaces…), two names
//! never share a token, and [`NameCodec::unescape`] refuses what
//! [`NameCodec::escape`] could not have written. Each broker picks the bytes
//! its syntax allows.

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct NameCodec {
    /// Starts an escaped byte (`%XX`, `_XX`); never kept as itself.
    marker: u8,
    /// Bytes kept as they are besides ASCII letters and digits.
    keep: &'static [u8],
    /// The token of the empty name, for brokers that refuse empty tokens.
    empty: &'static str,
}

impl NameCodec {
    /// A codec; `keep` must not contain `marker`, and `empty` must not be a
    /// token [`NameCodec::escape`] writes for a non-empty name.
    pub const fn new(marker: u8, keep: &'static [u8], empty: &'static str) -> Self {
        Self {
            marker,
            keep,
            empty,
        }
    }

    fn kept(&self, b: u8) -> bool {
        b.is_ascii_alphanumeric() || self.keep.contains(&b)
    }

    /// The token of `name`.
    pub fn escape(&self, name: &str) -> String {
        if name.is_empty() {
            return self.empty.to_owned();
        }
        let mut out = String::with_capacity(name.len());
        for b in name.bytes() {
            if self.kept(b) {
                out.push(b as char);
            } else {
                out.push(self.marker as char);
                out.push_str(&format!("{b:02X}"));
            }
        }
        out
    }

    /// The name of a token; `None` for text `escape` could not have written.
    pub fn unescape(&self, text: &str) -> Option<String> {
        if text == self.empty {
            return Some(String::new());
        }
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == self.marker {
                let hex = text.get(i + 1..i + 3)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else if self.kept(b) {
                out.push(b);
                i += 1;
            } else {
                return None;
            }
        }
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PERCENT: NameCodec = NameCodec::new(b'%', b"_.-", "");
    const UNDERSCORE: NameCodec = NameCodec::new(b'_', b"-", "_");

    #[test]
    fn hostile_names_become_plain_tokens() {
        for codec in [PERCENT, UNDERSCORE] {
            for name in [
                "a.b", "*", ">", "#", "{x}", "a:b", "a/b", "%", "a b", "é", "_",
            ] {
                let token = codec.escape(name);
                assert!(
                    token.bytes().all(|b| b.is_ascii_alphanumeric()
                        || codec.keep.contains(&b)
                        || b == codec.marker),
                    "{name:?} → {token:?}"
                );
                assert_eq!(codec.unescape(&token).as_deref(), Some(name));
            }
        }
        assert_eq!(UNDERSCORE.escape(""), "_");
        assert_eq!(UNDERSCORE.unescape("_"), Some(String::new()));
        assert_eq!(PERCENT.escape("a.b:c"), "a.b%3Ac");
        assert_eq!(UNDERSCORE.escape("a.b"), "a_2Eb");
    }

    #[test]
    fn refuses_what_it_could_not_have_written() {
        for bad in ["%", "%4", "%zz", "a b", "a*"] {
            assert_eq!(PERCENT.unescape(bad), None, "{bad:?}");
        }
        for bad in ["_probe", "_4", "a.b", "a b"] {
            assert_eq!(UNDERSCORE.unescape(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_never_collides(a in ".{0,12}", b in ".{0,12}") {
            for codec in [PERCENT, UNDERSCORE] {
                prop_assert_eq!(codec.unescape(&codec.escape(&a)), Some(a.clone()));
                if a != b {
                    prop_assert_ne!(codec.escape(&a), codec.escape(&b));
                }
            }
        }
    }
}
