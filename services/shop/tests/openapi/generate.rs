//! Requests made from the document's own schemas, as proptest strategies.
//!
//! Every operation of the document becomes a strategy for a [`Plan`]: its
//! path, query and header parameters and its body, each either valid by
//! its schema or deliberately not (a value out of bounds, a random path
//! segment, an unknown query parameter, a body of the wrong shape, not
//! JSON, or not declared as JSON). A plan made only of valid parts is
//! marked [`Plan::valid`], so the test can hold the server to accepting it.
//!
//! Ids and skus must name things that exist for an answer to get past a
//! 404, so a string may be [`Gen::Reused`]: when the request is sent it
//! takes one of the values the shop answered before under the same
//! constraint (see [`Pools`]), falling back to a fresh value while there is
//! none.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::{Map, Value, json};

use crate::schema::Validator;

/// Values the shop answered with, by the constraint they met: `link:<op>:<param>`
/// for a value an OpenAPI link gives to a parameter, `format:uuid` or
/// `pattern:<p>` for strings of that format or pattern.
#[derive(Debug, Default)]
pub(crate) struct Pools(HashMap<String, Vec<String>>);

/// How many values each pool keeps (the most recent ones).
const POOL_SIZE: usize = 64;

impl Pools {
    pub(crate) fn add(&mut self, key: String, value: String) {
        let pool = self.0.entry(key).or_default();
        if !pool.contains(&value) {
            if pool.len() == POOL_SIZE {
                pool.remove(0);
            }
            pool.push(value);
        }
    }

    /// The `pick`th value (modulo) of the pools under `keys` taken together.
    fn pick(&self, keys: &[String], pick: usize) -> Option<&str> {
        let values: Vec<&String> = keys.iter().filter_map(|key| self.0.get(key)).flatten().collect();
        (!values.is_empty()).then(|| values[pick % values.len()].as_str())
    }
}

/// A generated value, resolved against the [`Pools`] when the request is sent.
#[derive(Debug, Clone)]
pub(crate) enum Gen {
    Json(Value),
    /// A string from the pools under these keys, else the fallback.
    Reused {
        keys: Vec<String>,
        pick: usize,
        fallback: Box<Gen>,
    },
    Array(Vec<Gen>),
    Object(Vec<(String, Gen)>),
    /// Raw bytes of a path segment or query value (percent-encoded when sent).
    Bytes(Vec<u8>),
}

impl Gen {
    pub(crate) fn resolve(&self, pools: &Pools) -> Value {
        match self {
            Self::Json(value) => value.clone(),
            Self::Reused { keys, pick, fallback } => match pools.pick(keys, *pick) {
                Some(value) => Value::String(value.to_owned()),
                None => fallback.resolve(pools),
            },
            Self::Array(items) => Value::Array(items.iter().map(|item| item.resolve(pools)).collect()),
            Self::Object(members) => {
                Value::Object(members.iter().map(|(name, member)| (name.clone(), member.resolve(pools))).collect())
            }
            Self::Bytes(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    /// The value as it goes into a path segment or a query: percent-encoded bytes.
    pub(crate) fn encoded(&self, pools: &Pools) -> String {
        let bytes = match self {
            Self::Bytes(bytes) => bytes.clone(),
            other => match other.resolve(pools) {
                Value::String(text) => text.into_bytes(),
                value => value.to_string().into_bytes(),
            },
        };
        let mut encoded = String::new();
        for byte in bytes {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        encoded
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Json(Gen),
    /// Sent as is, with this content type (or none).
    Raw {
        content_type: Option<String>,
        bytes: Vec<u8>,
    },
}

/// One request to send.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) operation: usize,
    pub(crate) path: Vec<(String, Gen)>,
    pub(crate) query: Vec<(String, Gen)>,
    pub(crate) headers: Vec<(String, Gen)>,
    pub(crate) body: Option<Body>,
    /// Every part is valid by the document.
    pub(crate) valid: bool,
    /// A query parameter the operation does not document, if one was added.
    pub(crate) unknown: Option<String>,
}

/// One operation of the document.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) id: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) parameters: Vec<Parameter>,
    pub(crate) body: Option<Value>,
    /// Status → the operation's response object (references followed).
    pub(crate) responses: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct Parameter {
    pub(crate) name: String,
    pub(crate) location: String,
    pub(crate) required: bool,
    pub(crate) schema: Value,
}

/// Every operation of `document`.
pub(crate) fn operations(document: &Value, validator: &Validator<'_>) -> Vec<Operation> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let parameters = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Parameter {
                    name: p["name"].as_str().expect("a parameter name").to_owned(),
                    location: p["in"].as_str().expect("a parameter location").to_owned(),
                    required: p["required"].as_bool().unwrap_or(false),
                    schema: p["schema"].clone(),
                })
                .collect();
            let body = operation.get("requestBody").map(|body| {
                assert_eq!(body["required"], true, "{method} {path}: an optional body");
                body["content"]["application/json"]["schema"].clone()
            });
            let responses = operation["responses"]
                .as_object()
                .expect("responses")
                .iter()
                .map(|(status, response)| (status.clone(), validator.resolve(response).expect("a response").clone()))
                .collect();
            operations.push(Operation {
                id: operation["operationId"].as_str().expect("an operationId").to_owned(),
                method: method.to_uppercase(),
                path: path.clone(),
                parameters,
                body,
                responses,
            });
        }
    }
    operations
}

/// The longest `wait_ms` generated (and it is always generated). The
/// document allows 30 s; a request for an order that is not decided yet, or
/// not shown by a view yet, would make the test wait that long.
const MAX_WAIT_MS: i64 = 50;

/// The pool a link fills for `parameter` of `operation`.
pub(crate) fn link_pool(operation: &str, parameter: &str) -> String {
    format!("link:{operation}:{parameter}")
}

/// Plans for `operation`.
pub(crate) fn plans(index: usize, operation: &Operation, schemas: &Schemas<'_>) -> BoxedStrategy<Plan> {
    let part = |parameter: &Parameter| -> BoxedStrategy<(String, Option<Gen>, bool)> {
        let name = parameter.name.clone();
        let mut valid = schemas.value(&parameter.schema, 0);
        if parameter.name == "wait_ms" {
            valid = (0..=MAX_WAIT_MS).prop_map(|ms| Gen::Json(json!(ms))).boxed();
        }
        if parameter.location == "path" {
            let keys = vec![link_pool(&operation.id, &parameter.name)];
            let reused = (any::<usize>(), valid.clone()).prop_map(move |(pick, fallback)| Gen::Reused {
                keys: keys.clone(),
                pick,
                fallback: Box::new(fallback),
            });
            let (n1, n2, n3) = (name.clone(), name.clone(), name.clone());
            // A random segment: any bytes but none (an empty segment is another path).
            let random = proptest::collection::vec(any::<u8>(), 1..12).prop_map(Gen::Bytes);
            return prop_oneof![
                5 => reused.prop_map(move |g| (n1.clone(), Some(g), true)),
                3 => valid.prop_map(move |g| (n2.clone(), Some(g), true)),
                2 => random.prop_map(move |g| (n3.clone(), Some(g), false)),
            ]
            .boxed();
        }
        let invalid = schemas.invalid_parameter(&parameter.schema, parameter.location == "header");
        let (n1, n2, n3) = (name.clone(), name.clone(), name.clone());
        let required = parameter.required;
        if parameter.name == "wait_ms" && operation.parameters.iter().any(|p| p.name == "order") {
            // Always bound a wait: absent, `wait_ms` has a default of seconds
            // (`order` on the order-history list), and the order may never show.
            return prop_oneof![
                5 => valid.prop_map(move |g| (n2.clone(), Some(g), true)),
                1 => invalid.prop_map(move |g| (n3.clone(), Some(g), false)),
            ]
            .boxed();
        }
        prop_oneof![
            4 => Just(()).prop_map(move |()| (n1.clone(), None, !required)),
            5 => valid.prop_map(move |g| (n2.clone(), Some(g), true)),
            1 => invalid.prop_map(move |g| (n3.clone(), Some(g), false)),
        ]
        .boxed()
    };
    let path: Vec<_> = operation.parameters.iter().filter(|p| p.location == "path").map(part).collect();
    let query: Vec<_> = operation.parameters.iter().filter(|p| p.location == "query").map(part).collect();
    let headers: Vec<_> = operation.parameters.iter().filter(|p| p.location == "header").map(part).collect();
    // Now and then a parameter the operation does not read.
    let unknown = proptest::option::weighted(
        0.1,
        ("[a-z_]{1,8}", "[ -~]{0,8}").prop_map(|(name, value)| (name, Gen::Bytes(value.into_bytes()))),
    );
    let body = match &operation.body {
        None => Just((None, true)).boxed(),
        Some(schema) => schemas.body(schema).prop_map(|(body, valid)| (Some(body), valid)).boxed(),
    };
    let known: Vec<String> = operation.parameters.iter().map(|p| p.name.clone()).collect();
    (path, query, headers, unknown, body)
        .prop_map(move |(path, query, headers, unknown, (body, body_valid))| {
            let mut valid = body_valid;
            let mut take = |parts: Vec<(String, Option<Gen>, bool)>| -> Vec<(String, Gen)> {
                parts
                    .into_iter()
                    .filter_map(|(name, value, ok)| {
                        valid &= ok;
                        value.map(|value| (name, value))
                    })
                    .collect()
            };
            let path = take(path);
            let mut query = take(query);
            let headers = take(headers);
            let unknown = unknown.and_then(|(name, value)| {
                query.push((name.clone(), value));
                (!known.contains(&name)).then_some(name)
            });
            valid &= unknown.is_none();
            Plan { operation: index, path, query, headers, body, valid, unknown }
        })
        .boxed()
}

/// Strategies for the values of the document's schemas.
pub(crate) struct Schemas<'a> {
    pub(crate) validator: &'a Validator<'a>,
}

/// How deep generated objects and arrays nest.
const MAX_DEPTH: usize = 8;

impl Schemas<'_> {
    /// Values valid by `schema`.
    pub(crate) fn value(&self, schema: &Value, depth: usize) -> BoxedStrategy<Gen> {
        let schema = self.validator.resolve(schema).expect("a schema").clone();
        assert!(depth < MAX_DEPTH, "schemas nest deeper than {MAX_DEPTH}: {schema}");
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return proptest::sample::select(values.clone()).prop_map(Gen::Json).boxed();
        }
        if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
            let strategies: Vec<_> = alternatives.iter().map(|a| self.value(a, depth + 1)).collect();
            return Union::new(strategies).boxed();
        }
        let types: Vec<String> = match &schema["type"] {
            Value::String(one) => vec![one.clone()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            other => panic!("a schema without a type: {other} in {schema}"),
        };
        let strategies: Vec<_> = types.iter().map(|t| self.of_type(t, &schema, depth)).collect();
        Union::new(strategies).boxed()
    }

    fn of_type(&self, name: &str, schema: &Value, depth: usize) -> BoxedStrategy<Gen> {
        match name {
            "null" => Just(Gen::Json(Value::Null)).boxed(),
            "boolean" => any::<bool>().prop_map(|b| Gen::Json(json!(b))).boxed(),
            "integer" => integer(schema).prop_map(|n| Gen::Json(json!(n))).boxed(),
            "string" => self.string(schema),
            "array" => {
                let min = schema["minItems"].as_u64().unwrap_or(0) as usize;
                // Short arrays: an order of one or two items is likelier to be in stock.
                let max = schema["maxItems"].as_u64().map_or(min + 2, |max| (max as usize).min(min + 1));
                proptest::collection::vec(self.value(&schema["items"], depth + 1), min..=max)
                    .prop_map(Gen::Array)
                    .boxed()
            }
            "object" => {
                let required: Vec<&str> =
                    schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let members: Vec<_> = schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, property)| {
                        let value = self.value(property, depth + 1);
                        let name = name.clone();
                        if required.contains(&name.as_str()) {
                            value.prop_map(move |v| Some((name.clone(), v))).boxed()
                        } else {
                            proptest::option::of(value.prop_map(move |v| (name.clone(), v))).boxed()
                        }
                    })
                    .collect();
                members.prop_map(|members| Gen::Object(members.into_iter().flatten().collect())).boxed()
            }
            other => panic!("cannot generate values of type {other}"),
        }
    }

    fn string(&self, schema: &Value) -> BoxedStrategy<Gen> {
        let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
        let max = schema["maxLength"].as_u64().map_or(usize::MAX, |max| max as usize);
        let fits = move |text: &String| (min..=max).contains(&text.chars().count());
        let (key, fresh) = match (schema["format"].as_str(), schema["pattern"].as_str()) {
            (Some("uuid"), _) => ("format:uuid".to_owned(), uuid_text().boxed()),
            (Some("date-time"), _) => ("format:date-time".to_owned(), date_time().boxed()),
            (Some("email"), _) => ("format:email".to_owned(), "[a-z0-9.]{1,12}@[a-z0-9]{1,12}\\.[a-z]{2,6}".boxed()),
            (Some(other), _) => panic!("cannot generate strings of format {other}"),
            (None, Some(pattern)) => {
                let unanchored = pattern.trim_start_matches('^').trim_end_matches('$');
                let strings = proptest::string::string_regex(unanchored)
                    .unwrap_or_else(|err| panic!("cannot generate strings for the pattern {pattern}: {err}"));
                (format!("pattern:{pattern}"), strings.boxed())
            }
            (None, None) => ("string".to_owned(), ".{0,16}".boxed()),
        };
        let fresh = fresh.prop_filter("outside the length bounds", fits).prop_map(|s| Gen::Json(Value::String(s)));
        prop_oneof![
            1 => fresh.clone(),
            1 => (any::<usize>(), fresh).prop_map(move |(pick, fallback)| Gen::Reused {
                keys: vec![key.clone()],
                pick,
                fallback: Box::new(fallback),
            }),
        ]
        .boxed()
    }

    /// Parameter values that break `schema` (most of the time: a random
    /// text may happen to fit). A header's value stays a valid header value.
    fn invalid_parameter(&self, schema: &Value, header: bool) -> BoxedStrategy<Gen> {
        let schema = self.validator.resolve(schema).expect("a schema").clone();
        let mut wrong: Vec<String> = vec![String::new(), "x".repeat(300), "1.5".into(), "-1".into(), "null".into()];
        for bound in ["minimum", "maximum"] {
            if let Some(n) = schema[bound].as_i64() {
                wrong.push((if bound == "minimum" { n - 1 } else { n + 1 }).to_string());
            }
        }
        if let Some(max) = schema["maxLength"].as_u64() {
            wrong.push("A".repeat(max as usize + 1));
        }
        let random = if header { "[ -~]{0,20}".boxed() } else { ".{0,12}".boxed() };
        prop_oneof![
            proptest::sample::select(wrong).prop_map(|s| Gen::Bytes(s.into_bytes())),
            random.prop_map(|s| Gen::Bytes(s.into_bytes())),
        ]
        .boxed()
    }

    /// Bodies for `schema`, and whether each is valid: mostly valid ones,
    /// then the same with a member missing, of the wrong type or added,
    /// any JSON, text that is not JSON, a body over the size limit, and a
    /// valid body not sent as JSON.
    fn body(&self, schema: &Value) -> BoxedStrategy<(Body, bool)> {
        let valid = self.value(schema, 0);
        let json_value = arbitrary_json();
        prop_oneof![
            14 => valid.clone().prop_map(|g| (Body::Json(g), true)),
            2 => (valid.clone(), any::<usize>(), json_value.clone())
                .prop_map(|(g, pick, replacement)| (Body::Json(mutate(g, pick, replacement)), false)),
            1 => json_value.prop_map(|v| (Body::Json(Gen::Json(v)), false)),
            1 => ".{0,24}".prop_map(|text| (Body::Raw { content_type: Some("application/json".into()), bytes: text.into_bytes() }, false)),
            1 => Just(()).prop_map(|()| {
                // Larger than the gateway's body limit (64 KiB by default).
                let bytes = format!("{{\"name\":\"{}\"}}", "A".repeat(70_000)).into_bytes();
                (Body::Raw { content_type: Some("application/json".into()), bytes }, false)
            }),
            1 => (valid, proptest::option::of(Just("text/plain".to_owned())))
                .prop_map(|(g, content_type)| {
                    let bytes = serde_json::to_vec(&g.resolve(&Pools::default())).expect("a body");
                    (Body::Raw { content_type, bytes }, false)
                }),
        ]
        .boxed()
    }
}

/// Integers within the schema's bounds: small ones most often (prices,
/// quantities), then up to a million (credit limits that cover them), the
/// bounds themselves, and anything in between.
fn integer(schema: &Value) -> BoxedStrategy<i64> {
    let min = schema["minimum"].as_i64().unwrap_or(i64::MIN);
    let max = schema["maximum"].as_i64().unwrap_or(i64::MAX);
    prop_oneof![
        4 => min.max(-5)..=max.min(100),
        2 => min.max(0)..=max.min(1_000_000),
        1 => Just(min),
        1 => Just(max),
        1 => min..=max,
    ]
    .boxed()
}

/// A UUID in its hyphenated form, in either case.
fn uuid_text() -> impl Strategy<Value = String> {
    (any::<u128>(), any::<bool>()).prop_map(|(bits, upper)| {
        let text = uuid::Uuid::from_u128(bits).hyphenated().to_string();
        if upper { text.to_uppercase() } else { text }
    })
}

fn date_time() -> impl Strategy<Value = String> {
    (0i64..4_000_000_000)
        .prop_map(|seconds| chrono::DateTime::from_timestamp(seconds, 0).expect("a time in range").to_rfc3339())
}

/// Any JSON value, a few levels deep.
fn arbitrary_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// `value` with one of its members (the `pick`th, depth first) removed,
/// replaced by `replacement`, or joined by an unknown member.
fn mutate(value: Gen, pick: usize, replacement: Value) -> Gen {
    let mut places = 0;
    count(&value, &mut places);
    let target = pick % places.max(1);
    let mut seen = 0;
    edit(value, target, &mut seen, pick / places.max(1) % 3, &replacement)
}

fn count(value: &Gen, places: &mut usize) {
    match value {
        Gen::Object(members) => {
            *places += 1;
            for (_, member) in members {
                count(member, places);
            }
        }
        Gen::Array(items) => items.iter().for_each(|item| count(item, places)),
        _ => {}
    }
}

fn edit(value: Gen, target: usize, seen: &mut usize, how: usize, replacement: &Value) -> Gen {
    match value {
        Gen::Object(mut members) => {
            let here = *seen == target;
            *seen += 1;
            if here {
                match (how, members.is_empty()) {
                    (0, false) => {
                        members.remove(0);
                    }
                    (1, false) => members[0].1 = Gen::Json(replacement.clone()),
                    _ => members.push(("an_unknown_member".to_owned(), Gen::Json(replacement.clone()))),
                }
                return Gen::Object(members);
            }
            Gen::Object(
                members
                    .into_iter()
                    .map(|(name, member)| (name, edit(member, target, seen, how, replacement)))
                    .collect(),
            )
        }
        Gen::Array(items) => {
            Gen::Array(items.into_iter().map(|item| edit(item, target, seen, how, replacement)).collect())
        }
        other => other,
    }
}
