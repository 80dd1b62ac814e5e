//! The line of a field inside a YAML document.
//!
//! serde_yaml keeps no positions in its values, but it does put the position of the
//! current event into every error. So to find `spec.listeners[1].port`, the document is
//! walked with a visitor that fails on purpose when it reaches that field; the error's
//! location is the field's line. Exact for block and flow style alike, and cheap for
//! documents of a few hundred lines.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

const FOUND: &str = "\u{1}edgemq-field-found\u{1}";

/// 1-based line (inside `text`) of the value at `path`, or of its nearest enclosing
/// value that exists.
pub(crate) fn line_of(text: &str, path: &[Seg<'_>]) -> Option<usize> {
    (0..=path.len())
        .rev()
        .find_map(|n| exact_line(text, &path[..n]))
}

fn exact_line(text: &str, path: &[Seg<'_>]) -> Option<usize> {
    let de = serde_yaml::Deserializer::from_str(text);
    let found = Finder { path }.deserialize(de);
    match found {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| l.line()),
        _ => None,
    }
}

struct Finder<'p, 'a> {
    path: &'p [Seg<'a>],
}

impl<'de> DeserializeSeed<'de> for Finder<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A key compared as text, whatever scalar it is.
struct KeyText(Option<String>);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        Ok(KeyText(match v {
            serde_yaml::Value::String(s) => Some(s),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }))
    }
}

impl<'de> Visitor<'de> for Finder<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(KeyText(k)) = map.next_key::<KeyText>()? {
            match first {
                Seg::Key(want) if k.as_deref() == Some(*want) => {
                    return map.next_value_seed(Finder { path: rest });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let mut i = 0;
        loop {
            if *first == Seg::Index(i) {
                return seq.next_element_seed(Finder { path: rest }).map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.leaf()
    }
}

impl Finder<'_, '_> {
    fn leaf<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: x\nkind: Broker\nspec:\n  listeners:\n    - {name: a, port: 1}\n    - name: b\n      port: 2\n      tls:\n        certificateRef: c\n";

    #[test]
    fn finds_scalars_in_flow_and_block_style() {
        let p = |s: &[Seg]| line_of(DOC, s);
        assert_eq!(p(&[Seg::Key("kind")]), Some(2));
        assert_eq!(
            p(&[
                Seg::Key("spec"),
                Seg::Key("listeners"),
                Seg::Index(0),
                Seg::Key("port")
            ]),
            Some(5)
        );
        assert_eq!(
            p(&[
                Seg::Key("spec"),
                Seg::Key("listeners"),
                Seg::Index(1),
                Seg::Key("port")
            ]),
            Some(7)
        );
        let cert = [
            Seg::Key("spec"),
            Seg::Key("listeners"),
            Seg::Index(1),
            Seg::Key("tls"),
            Seg::Key("certificateRef"),
        ];
        assert_eq!(p(&cert), Some(9));
    }

    #[test]
    fn falls_back_to_the_nearest_existing_parent() {
        let missing = [
            Seg::Key("spec"),
            Seg::Key("listeners"),
            Seg::Index(0),
            Seg::Key("bindAddress"),
        ];
        assert_eq!(line_of(DOC, &missing), Some(5));
    }
}
