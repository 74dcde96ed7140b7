//! JSON Schema cleaning for Gemini's `parametersJsonSchema` / `responseJsonSchema`.

use serde_json::Value;

/// Keywords Gemini's JSON Schema fields reject or that mean nothing to it.
const DROPPED_KEYWORDS: &[&str] = &[
    "$schema",
    "$comment",
    "strict",
    "if",
    "then",
    "else",
    "not",
    "dependentSchemas",
    "dependentRequired",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentEncoding",
    "contentMediaType",
    "examples",
];

/// Cleans a JSON Schema for `parametersJsonSchema` / `responseJsonSchema`: drops keywords
/// Gemini rejects (`$schema`, `strict`, `if`/`then`/`else`, `not`, `patternProperties`, ...),
/// rewrites `const: x` to `enum: [x]` and `definitions` to `$defs` (with their `$ref`s).
/// Property names are never touched.
pub(crate) fn clean_schema(schema: &Value) -> Value {
    let mut out = schema.clone();
    clean_in_place(&mut out);
    out
}

fn clean_in_place(v: &mut Value) {
    let Value::Object(o) = v else {
        return;
    };
    for k in DROPPED_KEYWORDS {
        o.remove(*k);
    }
    if let Some(c) = o.remove("const") {
        o.entry("enum").or_insert_with(|| Value::Array(vec![c]));
    }
    if let Some(defs) = o.remove("definitions") {
        o.entry("$defs").or_insert(defs);
    }
    if let Some(Value::String(r)) = o.get_mut("$ref")
        && let Some(rest) = r.strip_prefix("#/definitions/")
    {
        *r = format!("#/$defs/{rest}");
    }
    for key in ["properties", "$defs"] {
        if let Some(Value::Object(map)) = o.get_mut(key) {
            map.values_mut().for_each(clean_in_place);
        }
    }
    for key in ["items", "additionalProperties", "contains", "propertyNames"] {
        if let Some(sub) = o.get_mut(key) {
            match sub {
                Value::Array(a) => a.iter_mut().for_each(clean_in_place),
                other => clean_in_place(other),
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(a)) = o.get_mut(key) {
            a.iter_mut().for_each(clean_in_place);
        }
    }
}
