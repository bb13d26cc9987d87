//! Keeps `docs/configuration.md` and the schema in step: every key the YAML accepts has a row
//! in the reference, every row names a key that exists, and an enum key's row names each value.
//!
//! The key list comes from the serde schema itself, not from a hand list: [`Walker`] is a
//! `Deserializer` that answers every struct with all of its fields (serde's derive hands over
//! the complete field list), every sequence with one element, every map with one `<name>`
//! entry and every `Option` with `Some`, so deserializing a [`Document`] from it visits every
//! key. Enums are entered once per variant index over several passes, so keys behind a
//! data-carrying variant would be found too. Anything the walker cannot enter fails the test
//! with the key path instead of being skipped.

use super::schema::Document;
use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, VariantAccess, Visitor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What one walk over the schema found.
#[derive(Default)]
struct Found {
    /// Key path (`listeners[].tls.cert`, `upstreams.<name>.peers`) → the values, if an enum.
    keys: BTreeMap<String, BTreeSet<&'static str>>,
    /// The most variants any enum had: how many passes it takes to enter each one.
    max_variants: usize,
}

#[derive(Debug)]
struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl de::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

/// A deserializer positioned at one key path of the schema.
#[derive(Clone, Copy)]
struct Walker<'a> {
    path: &'a str,
    /// Which variant of each enum this pass enters (the last one if it has fewer).
    pass: usize,
    found: &'a RefCell<Found>,
}

impl<'a> Walker<'a> {
    fn at<'b>(&self, path: &'b str) -> Walker<'b>
    where
        'a: 'b,
    {
        Walker {
            path,
            pass: self.pass,
            found: self.found,
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn record(&self, path: &str) {
        self.found
            .borrow_mut()
            .keys
            .entry(path.to_string())
            .or_default();
    }

    fn unsupported<T>(&self, what: &str) -> Result<T, WalkError> {
        Err(WalkError(format!(
            "`{}`: the schema walker cannot enter {what}; teach src/config/doc_sync.rs",
            self.path
        )))
    }
}

macro_rules! visit_as {
    ($($method:ident => $visit:ident($($value:expr)?);)*) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
            v.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = WalkError;

    // Only `ByteSize` asks for "any" (an untagged number-or-string), and a number satisfies
    // it. A type with keys behind "any" (an untagged enum of structs) rejects a number, so the
    // walk fails there rather than skipping its keys.
    visit_as! {
        deserialize_any => visit_u64(1024);
        deserialize_bool => visit_bool(true);
        deserialize_i8 => visit_i64(1);
        deserialize_i16 => visit_i64(1);
        deserialize_i32 => visit_i64(1);
        deserialize_i64 => visit_i64(1);
        deserialize_u8 => visit_u64(1);
        deserialize_u16 => visit_u64(1);
        deserialize_u32 => visit_u64(1);
        deserialize_u64 => visit_u64(1);
        deserialize_f32 => visit_f64(1.0);
        deserialize_f64 => visit_f64(1.0);
        deserialize_char => visit_char('a');
        // A string that also parses as a duration (`HumanDuration` goes through a string).
        deserialize_str => visit_str("1s");
        deserialize_string => visit_str("1s");
        deserialize_bytes => visit_bytes(b"1s");
        deserialize_byte_buf => visit_bytes(b"1s");
        deserialize_unit => visit_unit();
        deserialize_ignored_any => visit_unit();
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        let path = format!("{}[]", self.path);
        v.visit_seq(OneElement {
            walker: self.at(&path),
            done: false,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, WalkError> {
        self.unsupported("a tuple")
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _v: V,
    ) -> Result<V::Value, WalkError> {
        self.unsupported("a tuple struct")
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        let path = self.child("<name>");
        v.visit_map(OneEntry {
            walker: self.at(&path),
            state: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_map(AllFields {
            walker: self,
            fields,
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        let Some(last) = variants.len().checked_sub(1) else {
            return self.unsupported(&format!("the empty enum {name}"));
        };
        {
            let mut found = self.found.borrow_mut();
            found.max_variants = found.max_variants.max(variants.len());
            // A list of enum values (`protocols: [http, cluster]`) documents them on the list.
            let key = self.path.trim_end_matches("[]").to_string();
            found.keys.entry(key).or_default().extend(variants);
        }
        v.visit_enum(Variant {
            walker: self,
            name: variants[self.pass.min(last)],
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, WalkError> {
        self.unsupported("an identifier")
    }
}

/// A sequence of one element.
struct OneElement<'a> {
    walker: Walker<'a>,
    done: bool,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, WalkError> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(None);
        }
        seed.deserialize(self.walker).map(Some)
    }
}

/// A map of one entry, keyed `<name>` (`upstreams.<name>`).
struct OneEntry<'a> {
    walker: Walker<'a>,
    state: u8,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, WalkError> {
        if self.state > 0 {
            return Ok(None);
        }
        self.state = 1;
        seed.deserialize(StrDeserializer::<WalkError>::new("<name>"))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        seed.deserialize(self.walker)
    }
}

/// A struct with every one of its fields present.
struct AllFields<'a> {
    walker: Walker<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for AllFields<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, WalkError> {
        match self.fields.get(self.next) {
            Some(field) => seed
                .deserialize(StrDeserializer::<WalkError>::new(field))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let field = self.fields.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        let path = self.walker.child(field);
        self.walker.record(&path);
        seed.deserialize(self.walker.at(&path))
    }
}

/// The variant this pass enters.
struct Variant<'a> {
    walker: Walker<'a>,
    name: &'static str,
}

impl<'de, 'a> de::EnumAccess<'de> for Variant<'a> {
    type Error = WalkError;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), WalkError> {
        let value = seed.deserialize(StrDeserializer::<WalkError>::new(self.name))?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_> {
    type Error = WalkError;

    fn unit_variant(self) -> Result<(), WalkError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, WalkError> {
        seed.deserialize(self.walker)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, WalkError> {
        self.walker.unsupported("a tuple variant")
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_map(AllFields {
            walker: self.walker,
            fields,
            next: 0,
        })
    }
}

/// Every key of the configuration file, with the values of enum keys.
fn schema_keys() -> Result<BTreeMap<String, BTreeSet<&'static str>>, WalkError> {
    keys_of::<Document>()
}

/// Every key of `T`, with the values of enum keys.
fn keys_of<T: de::DeserializeOwned>() -> Result<BTreeMap<String, BTreeSet<&'static str>>, WalkError>
{
    let found = RefCell::new(Found::default());
    let mut pass = 0;
    loop {
        let walker = Walker {
            path: "",
            pass,
            found: &found,
        };
        T::deserialize(walker)?;
        pass += 1;
        if pass >= found.borrow().max_variants {
            break;
        }
    }
    Ok(found.into_inner().keys)
}

/// The rows of the reference: a table row whose first cell is one code span is a key.
fn documented_keys(markdown: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in markdown.lines() {
        let Some(rest) = line.trim().strip_prefix('|') else {
            continue;
        };
        let Some((first, _)) = rest.split_once('|') else {
            continue;
        };
        let cell = first.trim();
        if let Some(key) = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|k| !k.is_empty() && !k.contains([' ', '`']))
        {
            rows.insert(key.to_string(), line.to_string());
        }
    }
    rows
}

/// What is out of step between the schema and the reference, one line per problem.
fn mismatches(
    schema: &BTreeMap<String, BTreeSet<&'static str>>,
    doc: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, values) in schema {
        let Some(row) = doc.get(key) else {
            problems.push(format!("`{key}` has no row"));
            continue;
        };
        for value in values {
            if !row.contains(&format!("`{value}`")) {
                problems.push(format!("`{key}`'s row does not name the value `{value}`"));
            }
        }
    }
    for key in doc.keys().filter(|k| !schema.contains_key(*k)) {
        problems.push(format!("`{key}` has a row but is not in the schema"));
    }
    problems
}

#[test]
fn every_schema_key_is_in_docs_configuration_md() {
    let keys = schema_keys().expect("the walker enters the whole schema");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let markdown = std::fs::read_to_string(file).expect("docs/configuration.md is readable");
    let problems = mismatches(&keys, &documented_keys(&markdown));
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of step with src/config/schema.rs (a key's row is a \
         table row whose first cell is the key in backticks):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_walker_finds_nested_keys_and_enum_values() {
    let keys = schema_keys().expect("the walker enters the whole schema");
    for key in [
        "server.threads",
        "listeners[].tls.sni_certs[].names",
        "upstreams.<name>.tls.ca",
        "routes[].kea.rules[].commands.allow",
        "cluster.policy[].direction",
        "metrics.address",
    ] {
        assert!(keys.contains_key(key), "{key} missing from {keys:?}");
    }
    let protocols: Vec<_> = keys["listeners[].protocols"].iter().copied().collect();
    assert_eq!(protocols, ["cluster", "http"]);
}

#[test]
fn mismatches_name_missing_stale_and_unnamed_values() {
    let schema = BTreeMap::from([
        ("a.b".to_string(), BTreeSet::new()),
        ("a.mode".to_string(), BTreeSet::from(["on", "off"])),
    ]);
    let doc = documented_keys(
        "| key | meaning |\n|---|---|\n| `a.mode` | `on` or off |\n| `a.gone` | old |\n",
    );
    assert_eq!(
        mismatches(&schema, &doc),
        [
            "`a.b` has no row",
            "`a.mode`'s row does not name the value `off`",
            "`a.gone` has a row but is not in the schema",
        ]
    );
}

#[test]
fn the_walker_enters_every_variant_and_the_unit_types() {
    use super::units::{ByteSize, HumanDuration};
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        mode: Mode,
        sizes: BTreeMap<String, ByteSize>,
        every: Option<HumanDuration>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Mode {
        Off,
        Custom { depth: u32 },
        Wrapped(Inner),
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        level: u8,
    }
    let keys = keys_of::<Probe>().expect("the walker enters the probe");
    let names: Vec<&str> = keys.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["every", "mode", "mode.depth", "mode.level", "sizes"]
    );
    let modes: Vec<_> = keys["mode"].iter().copied().collect();
    assert_eq!(modes, ["custom", "off", "wrapped"]);
}
