//! Borrowed readings of Gemini answers for the per-event hot paths (the stream relay and the
//! OpenAI stream translation): just what they look at, read without allocating. Each reader
//! fails on input it does not describe, and its caller then reads the event in full.

// Each of the two users takes only some of the readers.
#![cfg_attr(
    not(all(feature = "stream-resume", feature = "openai")),
    allow(dead_code)
)]

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A field that is there, whatever its value (`null` included).
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// A string borrowed from the input when it has no escapes. (serde borrows a `Cow<str>` field
/// marked `borrow`, but copies one inside an `Option`.)
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

/// An optional string, borrowed as [`Borrowed`] is; for `deserialize_with`.
pub(crate) fn borrowed_str<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Option::<Borrowed<'a>>::deserialize(d).map(|o| o.map(|b| b.0))
}

/// The first element of a JSON array, read without collecting the array; the rest is skipped.
pub(crate) struct First<T>(pub(crate) Option<T>);

impl<T> Default for First<T> {
    fn default() -> Self {
        First(None)
    }
}

impl<T> First<T> {
    pub(crate) fn first(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// The one element of a JSON array; an empty or longer array does not read.
pub(crate) struct Only<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Only<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Only<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of one element")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Only<T>, A::Error> {
                let Some(one) = seq.next_element::<T>()? else {
                    return Err(A::Error::invalid_length(0, &self));
                };
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(2, &self));
                }
                Ok(Only(one))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A `parts` array folded as it is read.
#[derive(Default)]
pub(crate) struct Parts<'a> {
    /// How many parts there were.
    pub(crate) count: usize,
    /// The visible (non-thought) text of all parts, borrowed when one part holds it all.
    pub(crate) text: Cow<'a, str>,
    /// The thought text of all parts, likewise.
    pub(crate) reasoning: Cow<'a, str>,
    /// Whether a part is a function call.
    pub(crate) function_call: bool,
    /// Whether a part holds inline or file data (a generated image, say).
    pub(crate) media: bool,
    /// Whether a part holds anything but text, a thought flag and a signature (a call, code,
    /// media, ...).
    pub(crate) other: bool,
}

fn append<'a>(to: &mut Cow<'a, str>, text: Cow<'a, str>) {
    if to.is_empty() {
        *to = text;
    } else {
        to.to_mut().push_str(&text);
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Parts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Parts<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of parts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts<'a>, A::Error> {
                let mut parts = Parts::default();
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    parts.count += 1;
                    parts.function_call |= part.function_call;
                    parts.media |= part.media;
                    parts.other |= part.other;
                    match part.text {
                        Some(t) if part.thought => append(&mut parts.reasoning, t),
                        Some(t) => append(&mut parts.text, t),
                        None => {}
                    }
                }
                Ok(parts)
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// One part: its text, whether it is a thought, whether it is a function call, and whether it
/// holds anything else. A repeated key does not read (the full reading keeps the last one).
struct Part<'a> {
    text: Option<Cow<'a, str>>,
    thought: bool,
    function_call: bool,
    media: bool,
    other: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for Part<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Part<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a part")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part<'a>, A::Error> {
                let mut part = Part {
                    text: None,
                    thought: false,
                    function_call: false,
                    media: false,
                    other: false,
                };
                let mut seen = [false; 3];
                while let Some(key) = map.next_key::<Borrowed<'de>>()? {
                    let slot = match &*key.0 {
                        "text" => 0,
                        "thought" => 1,
                        "thoughtSignature" => 2,
                        "functionCall" => {
                            part.function_call = true;
                            part.other = true;
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        "inlineData" | "fileData" => {
                            part.media = true;
                            part.other = true;
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        _ => {
                            part.other = true;
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen[slot], true) {
                        return Err(A::Error::custom("a repeated key"));
                    }
                    match slot {
                        0 => part.text = Some(map.next_value::<Borrowed<'a>>()?.0),
                        1 => part.thought = map.next_value::<Option<bool>>()? == Some(true),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(part)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parts_fold_text_thoughts_and_calls_and_borrow_a_lone_text() {
        let p: Parts<'_> = serde_json::from_str(
            r#"[{"text":"a"},{"text":"t","thought":true},{"text":"b","thoughtSignature":"x"},{"functionCall":{"name":"f"}}]"#,
        )
        .unwrap();
        assert_eq!((p.count, &*p.text, &*p.reasoning), (4, "ab", "t"));
        assert!(p.function_call && p.other);
        let one: Parts<'_> = serde_json::from_str(r#"[{"text":"only","thought":false}]"#).unwrap();
        assert!(matches!(one.text, Cow::Borrowed("only")));
        assert!(!one.other && !one.function_call);
        let media: Parts<'_> = serde_json::from_str(r#"[{"inlineData":{"data":"AA"}}]"#).unwrap();
        assert!(media.other && media.media && !media.function_call);
        assert!(serde_json::from_str::<Parts<'_>>(r#"[{"text":"a","text":"b"}]"#).is_err());
        assert!(serde_json::from_str::<Parts<'_>>(r#"[{"text":null}]"#).is_err());
    }

    #[test]
    fn first_skips_the_rest_and_only_wants_exactly_one() {
        assert_eq!(
            serde_json::from_str::<First<u8>>("[7,8]").unwrap().0,
            Some(7)
        );
        assert_eq!(serde_json::from_str::<First<u8>>("[]").unwrap().0, None);
        assert_eq!(serde_json::from_str::<Only<u8>>("[7]").unwrap().0, 7);
        assert!(serde_json::from_str::<Only<u8>>("[]").is_err());
        assert!(serde_json::from_str::<Only<u8>>("[1,2]").is_err());
    }
}
