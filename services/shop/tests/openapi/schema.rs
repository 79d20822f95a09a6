//! A validator for the part of JSON Schema (2020-12, as OpenAPI 3.1 uses
//! it) that the shop's document uses, and nothing more: a keyword it does
//! not know fails the validation, so a document that grows a new keyword
//! cannot pass unchecked.
//!
//! Formats are asserted, not just annotations: `uuid` (the hyphenated
//! form), `date-time` (RFC 3339), `email` (`local@domain.tld`), `int32` and
//! `int64` (the range). Patterns are ECMA-262 in the document; the ones it
//! uses mean the same in the `regex` crate's syntax.

use std::collections::HashMap;
use std::sync::Mutex;

use regex::Regex;
use serde_json::Value;

/// Annotations: they describe a value without constraining it.
const ANNOTATIONS: [&str; 5] = ["description", "default", "example", "examples", "title"];

/// The document's schemas, and what a successful validation saw.
pub(crate) struct Validator<'a> {
    document: &'a Value,
    patterns: Mutex<HashMap<String, Regex>>,
}

/// A string met in a valid value, with the constraint its schema put on it
/// (`format:uuid`, `pattern:^[A-Za-z0-9_-]+$`): what the generator reuses
/// for another string under the same constraint.
pub(crate) type Seen = (String, String);

impl<'a> Validator<'a> {
    pub(crate) fn new(document: &'a Value) -> Self {
        Self { document, patterns: Mutex::new(HashMap::new()) }
    }

    /// `schema` with its `$ref`s followed (`#/...` pointers into the document).
    pub(crate) fn resolve<'s>(&'s self, mut schema: &'s Value) -> Result<&'s Value, String> {
        for _ in 0..32 {
            let Some(reference) = schema.get("$ref") else { return Ok(schema) };
            let pointer = reference
                .as_str()
                .and_then(|r| r.strip_prefix('#'))
                .ok_or_else(|| format!("unsupported $ref {reference}"))?;
            schema = self.document.pointer(pointer).ok_or_else(|| format!("$ref {reference} does not resolve"))?;
        }
        Err("a $ref chain longer than 32".to_owned())
    }

    /// Whether `value` is valid against `schema`; the error names where
    /// (`$.items[0].sku`) and why. `seen` collects the strings of the value
    /// that carry a format or a pattern.
    pub(crate) fn validate(&self, schema: &Value, value: &Value, seen: &mut Vec<Seen>) -> Result<(), String> {
        self.check(schema, value, "$", seen)
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, seen: &mut Vec<Seen>) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        let Some(keywords) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok(()),
                _ => Err(format!("{at}: unsupported schema {schema}")),
            };
        };
        for (keyword, argument) in keywords {
            let fail = |why: String| Err(format!("{at}: {why} (value {value})"));
            match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "$ref" => {}
                "type" => {
                    let types: Vec<&str> = match argument {
                        Value::String(one) => vec![one.as_str()],
                        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                        _ => return fail(format!("unsupported type {argument}")),
                    };
                    if !types.iter().any(|t| has_type(value, t)) {
                        return fail(format!("is not of type {argument}"));
                    }
                }
                "enum" => {
                    if !argument.as_array().is_some_and(|values| values.contains(value)) {
                        return fail(format!("is not one of {argument}"));
                    }
                }
                "oneOf" => {
                    let alternatives = argument.as_array().ok_or_else(|| format!("{at}: bad oneOf"))?;
                    let mut matched = Vec::new();
                    let mut reasons = Vec::new();
                    for alternative in alternatives {
                        let mut found = Vec::new();
                        match self.check(alternative, value, at, &mut found) {
                            Ok(()) => matched.push(found),
                            Err(reason) => reasons.push(reason),
                        }
                    }
                    match matched.len() {
                        1 => seen.extend(matched.into_iter().flatten()),
                        0 => return fail(format!("matches no alternative of oneOf: {}", reasons.join("; "))),
                        n => return fail(format!("matches {n} alternatives of oneOf")),
                    }
                }
                "properties" => {
                    let (Some(properties), Some(members)) = (argument.as_object(), value.as_object()) else {
                        continue;
                    };
                    for (name, member) in members {
                        if let Some(property) = properties.get(name) {
                            self.check(property, member, &format!("{at}.{name}"), seen)?;
                        }
                    }
                }
                "required" => {
                    let Some(members) = value.as_object() else { continue };
                    for name in argument.as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if !members.contains_key(name) {
                            return fail(format!("lacks the required member `{name}`"));
                        }
                    }
                }
                "additionalProperties" => {
                    let Some(members) = value.as_object() else { continue };
                    let declared = keywords.get("properties").and_then(Value::as_object);
                    for (name, member) in members {
                        if declared.is_some_and(|declared| declared.contains_key(name)) {
                            continue;
                        }
                        match argument {
                            Value::Bool(false) => return fail(format!("has the undeclared member `{name}`")),
                            Value::Bool(true) => {}
                            schema => self.check(schema, member, &format!("{at}.{name}"), seen)?,
                        }
                    }
                }
                "propertyNames" => {
                    let Some(members) = value.as_object() else { continue };
                    for name in members.keys() {
                        self.check(
                            argument,
                            &Value::String(name.clone()),
                            &format!("{at} (member name `{name}`)"),
                            seen,
                        )?;
                    }
                }
                "items" => {
                    for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                        self.check(argument, item, &format!("{at}[{i}]"), seen)?;
                    }
                }
                "minItems" | "maxItems" => {
                    let Some(items) = value.as_array() else { continue };
                    let bound = argument.as_u64().ok_or_else(|| format!("{at}: bad {keyword}"))?;
                    let count = items.len() as u64;
                    if (keyword == "minItems" && count < bound) || (keyword == "maxItems" && count > bound) {
                        return fail(format!("has {count} items, against {keyword} {bound}"));
                    }
                }
                "minLength" | "maxLength" => {
                    let Some(text) = value.as_str() else { continue };
                    let bound = argument.as_u64().ok_or_else(|| format!("{at}: bad {keyword}"))?;
                    // JSON Schema counts characters (code points), as Rust's `chars` does.
                    let count = text.chars().count() as u64;
                    if (keyword == "minLength" && count < bound) || (keyword == "maxLength" && count > bound) {
                        return fail(format!("has {count} characters, against {keyword} {bound}"));
                    }
                }
                "pattern" => {
                    let Some(text) = value.as_str() else { continue };
                    let pattern = argument.as_str().ok_or_else(|| format!("{at}: bad pattern"))?;
                    if !self.matches(pattern, text)? {
                        return fail(format!("does not match the pattern {pattern}"));
                    }
                    seen.push((format!("pattern:{pattern}"), text.to_owned()));
                }
                "minimum" | "maximum" => {
                    if !value.is_number() {
                        continue;
                    }
                    let within = match keyword.as_str() {
                        "minimum" => compare(value, argument).is_some_and(|o| o.is_ge()),
                        _ => compare(value, argument).is_some_and(|o| o.is_le()),
                    };
                    if !within {
                        return fail(format!("is out of {keyword} {argument}"));
                    }
                }
                "format" => {
                    let format = argument.as_str().ok_or_else(|| format!("{at}: bad format"))?;
                    if let Some(text) = value.as_str() {
                        if !string_has_format(text, format)? {
                            return fail(format!("is not a valid {format}"));
                        }
                        seen.push((format!("format:{format}"), text.to_owned()));
                    } else if value.is_number() && !number_has_format(value, format)? {
                        return fail(format!("is out of the range of {format}"));
                    }
                }
                other => return Err(format!("{at}: the validator does not support the keyword `{other}`")),
            }
        }
        Ok(())
    }

    /// Whether `text` matches `pattern` (compiled once).
    pub(crate) fn matches(&self, pattern: &str, text: &str) -> Result<bool, String> {
        let mut patterns = self.patterns.lock().map_err(|_| "a poisoned pattern cache".to_owned())?;
        if !patterns.contains_key(pattern) {
            let regex = Regex::new(pattern).map_err(|err| format!("pattern {pattern}: {err}"))?;
            patterns.insert(pattern.to_owned(), regex);
        }
        Ok(patterns[pattern].is_match(text))
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => false,
    }
}

fn compare(value: &Value, bound: &Value) -> Option<std::cmp::Ordering> {
    match (value.as_i64(), bound.as_i64()) {
        (Some(v), Some(b)) => Some(v.cmp(&b)),
        _ => value.as_f64()?.partial_cmp(&bound.as_f64()?),
    }
}

fn string_has_format(text: &str, format: &str) -> Result<bool, String> {
    Ok(match format {
        // The hyphenated form only: 36 characters, 8-4-4-4-12 hex digits.
        "uuid" => text.len() == 36 && uuid::Uuid::try_parse(text).is_ok(),
        "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "email" => text.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.contains('@') && domain.split('.').count() >= 2
        }),
        other => return Err(format!("the validator does not support the string format `{other}`")),
    })
}

fn number_has_format(value: &Value, format: &str) -> Result<bool, String> {
    Ok(match format {
        "int64" => value.is_i64(),
        "int32" => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        // JSON numbers are read as f64 already; a float must fit an f32.
        "double" => value.is_number(),
        "float" => value.as_f64().is_some_and(|n| n.abs() <= f64::from(f32::MAX)),
        other => return Err(format!("the validator does not support the number format `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(schema: Value, value: Value) -> Result<(), String> {
        let document = json!({ "components": { "schemas": { "S": schema } } });
        let validator = Validator::new(&document);
        validator.validate(&json!({ "$ref": "#/components/schemas/S" }), &value, &mut Vec::new())
    }

    #[test]
    fn each_keyword_refuses_what_it_should() {
        let object = json!({
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "n": { "type": "integer", "format": "int64", "minimum": 1, "maximum": 3 },
                "sku": { "type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[A-Z]+$" },
                "tags": { "type": "array", "items": { "enum": ["a", "b"] }, "minItems": 1, "maxItems": 2 },
                "at": { "oneOf": [{ "type": "string", "format": "date-time" }, { "type": "null" }] }
            }
        });
        let id = "0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70";
        let valid = json!({ "id": id, "n": 2, "sku": "AB", "tags": ["a"], "at": "2026-11-22T10:00:00.000000Z" });
        assert_eq!(check(object.clone(), valid), Ok(()));
        assert_eq!(check(object.clone(), json!({ "id": id, "at": null, "other": 1 })), Ok(()));
        let map = json!({ "type": "object", "propertyNames": { "type": "string", "pattern": "^[a-z]+$" } });
        assert_eq!(check(map.clone(), json!({ "order": 1 })), Ok(()));
        assert!(check(map, json!({ "Order": 1 })).is_err());
        for invalid in [
            json!({}),
            json!({ "id": id.replace('-', "") }),
            json!({ "id": format!("urn:uuid:{id}") }),
            json!({ "id": id, "n": 0 }),
            json!({ "id": id, "n": 4 }),
            json!({ "id": id, "n": 1.5 }),
            json!({ "id": id, "sku": "" }),
            json!({ "id": id, "sku": "ABCD" }),
            json!({ "id": id, "sku": "ab" }),
            json!({ "id": id, "tags": [] }),
            json!({ "id": id, "tags": ["a", "b", "a"] }),
            json!({ "id": id, "tags": ["c"] }),
            json!({ "id": id, "at": "yesterday" }),
            json!([]),
        ] {
            assert!(check(object.clone(), invalid.clone()).is_err(), "{invalid}");
        }
    }

    #[test]
    fn an_unknown_keyword_fails_rather_than_passes() {
        let error = check(json!({ "type": "string", "contentEncoding": "base64" }), json!("x")).unwrap_err();
        assert!(error.contains("contentEncoding"), "{error}");
    }
}
