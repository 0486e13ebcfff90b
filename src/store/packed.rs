//! A profile's content as the observed state holds it: one contiguous buffer instead of
//! nested `BTreeMap`s of `String`s.
//!
//! Every plan compares each charm profile an instance needs with the one in LXD. Held as
//! maps, that comparison chases a pointer per node and per string: at 20,000 machines
//! the profiles no longer fit in the CPU's cache and the comparison cost four times what
//! it does at 200. Packed, it reads a few adjacent cache lines, compares exactly the
//! same thing, and a profile takes a tenth of the memory.

use std::collections::BTreeMap;
use std::fmt;

use crate::lxd::ProfileContent;

/// The content of a profile, packed: the description, then the config (count, then key
/// and value), then the devices (count, then name, property count, key and value), each
/// string as its length and its bytes, each count and length a LEB128 number. Maps are
/// sorted, so equal contents pack to equal bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedContent(Box<[u8]>);

type Config = BTreeMap<String, String>;
type Devices = BTreeMap<String, BTreeMap<String, String>>;

/// One item of the packed sequence.
enum Token<'a> {
    Count(usize),
    Text(&'a str),
}

/// Feeds a content's items to `f` in packing order; stops at (and returns false on) the
/// first `f` refuses.
fn walk<'a>(
    description: &'a str,
    config: &'a Config,
    devices: &'a Devices,
    mut f: impl FnMut(Token<'a>) -> bool,
) -> bool {
    fn pairs<'a>(f: &mut impl FnMut(Token<'a>) -> bool, m: &'a Config) -> bool {
        f(Token::Count(m.len()))
            && m.iter()
                .all(|(k, v)| f(Token::Text(k)) && f(Token::Text(v)))
    }
    f(Token::Text(description))
        && pairs(&mut f, config)
        && f(Token::Count(devices.len()))
        && devices
            .iter()
            .all(|(name, props)| f(Token::Text(name)) && pairs(&mut f, props))
}

fn put_number(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads packed items from the front of a buffer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn number(&mut self) -> Option<usize> {
        let mut n = 0usize;
        for shift in (0..usize::BITS).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            n |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b < 0x80 {
                return Some(n);
            }
        }
        None
    }

    fn text(&mut self) -> Option<&'a str> {
        let len = self.number()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).ok()
    }

    /// Whether the next item is `t`.
    fn takes(&mut self, t: Token<'_>) -> bool {
        match t {
            Token::Count(n) => self.number() == Some(n),
            // Bytes, not UTF-8: equal bytes are equal strings.
            Token::Text(s) => self.number() == Some(s.len()) && self.bytes(s.as_bytes()),
        }
    }

    fn bytes(&mut self, want: &[u8]) -> bool {
        match self.0.split_at_checked(want.len()) {
            Some((have, rest)) if have == want => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn pairs(&mut self) -> Option<Config> {
        let n = self.number()?;
        (0..n)
            .map(|_| Some((self.text()?.to_string(), self.text()?.to_string())))
            .collect()
    }
}

impl PackedContent {
    pub fn of_parts(description: &str, config: &Config, devices: &Devices) -> PackedContent {
        let mut out = Vec::new();
        walk(description, config, devices, |t| {
            match t {
                Token::Count(n) => put_number(&mut out, n),
                Token::Text(s) => {
                    put_number(&mut out, s.len());
                    out.extend_from_slice(s.as_bytes());
                }
            }
            true
        });
        PackedContent(out.into_boxed_slice())
    }

    pub fn of(c: &ProfileContent) -> PackedContent {
        PackedContent::of_parts(&c.description, &c.config, &c.devices)
    }

    /// Whether this is exactly `c`; reads the buffer once, allocates nothing.
    pub fn is(&self, c: &ProfileContent) -> bool {
        let mut r = Reader(&self.0);
        walk(&c.description, &c.config, &c.devices, |t| r.takes(t)) && r.0.is_empty()
    }

    /// The content as maps again.
    pub fn unpack(&self) -> ProfileContent {
        let mut r = Reader(&self.0);
        let content = (|| {
            let description = r.text()?.to_string();
            let config = r.pairs()?;
            let devices = (0..r.number()?)
                .map(|_| Some((r.text()?.to_string(), r.pairs()?)))
                .collect::<Option<Devices>>()?;
            Some(ProfileContent {
                description,
                config,
                devices,
            })
        })();
        // Only `of_parts` makes these bytes: they always read back.
        content.unwrap_or_default()
    }
}

impl PartialEq<ProfileContent> for PackedContent {
    fn eq(&self, c: &ProfileContent) -> bool {
        self.is(c)
    }
}

impl fmt::Debug for PackedContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.unpack().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content(
        desc: &str,
        config: &[(&str, &str)],
        devices: &[(&str, &[(&str, &str)])],
    ) -> ProfileContent {
        let map = |kv: &[(&str, &str)]| -> Config {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ProfileContent {
            description: desc.into(),
            config: map(config),
            devices: devices
                .iter()
                .map(|(n, p)| (n.to_string(), map(p)))
                .collect(),
        }
    }

    #[test]
    fn a_content_reads_back_and_holds_itself_only() {
        let a = content(
            "x",
            &[("security.nesting", "true")],
            &[("kmsg", &[("type", "unix-char"), ("path", "/dev/kmsg")])],
        );
        let packed = PackedContent::of(&a);
        assert_eq!(packed.unpack(), a);
        assert!(packed.is(&a));
        // Each part that differs, however slightly, is a different content.
        for b in [
            content(
                "",
                &[("security.nesting", "true")],
                &[("kmsg", &[("type", "unix-char"), ("path", "/dev/kmsg")])],
            ),
            content(
                "x",
                &[("security.nesting", "false")],
                &[("kmsg", &[("type", "unix-char"), ("path", "/dev/kmsg")])],
            ),
            content(
                "x",
                &[],
                &[("kmsg", &[("type", "unix-char"), ("path", "/dev/kmsg")])],
            ),
            content(
                "x",
                &[("security.nesting", "true")],
                &[("kmsg", &[("type", "unix-char")])],
            ),
            content("x", &[("security.nesting", "true")], &[]),
            // The same strings, split differently between key and value.
            content(
                "x",
                &[("security.nestin", "gtrue")],
                &[("kmsg", &[("type", "unix-char"), ("path", "/dev/kmsg")])],
            ),
        ] {
            assert!(!packed.is(&b), "{b:?}");
            assert_ne!(PackedContent::of(&b), packed);
        }
    }

    #[test]
    fn truncated_or_extended_bytes_hold_nothing_and_unpack_to_the_default() {
        let a = content("x", &[("k", "v")], &[]);
        let bytes = PackedContent::of(&a).0;
        let cut = PackedContent(bytes[..bytes.len() - 1].into());
        assert!(!cut.is(&a));
        assert_eq!(cut.unpack(), ProfileContent::default());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(!PackedContent(longer.into()).is(&a));
    }

    proptest! {
        #[test]
        fn packing_is_exact(
            a in (".{0,3}", prop::collection::btree_map(".{0,3}", ".{0,200}", 0..4),
                  prop::collection::btree_map(".{0,3}", prop::collection::btree_map(".{0,3}", ".{0,3}", 0..3), 0..3)),
            b in (".{0,3}", prop::collection::btree_map(".{0,3}", ".{0,200}", 0..4),
                  prop::collection::btree_map(".{0,3}", prop::collection::btree_map(".{0,3}", ".{0,3}", 0..3), 0..3)),
        ) {
            let a = ProfileContent { description: a.0, config: a.1, devices: a.2 };
            let b = ProfileContent { description: b.0, config: b.1, devices: b.2 };
            let packed = PackedContent::of(&a);
            prop_assert_eq!(packed.unpack(), a.clone());
            prop_assert_eq!(packed.is(&b), a == b);
        }
    }
}
