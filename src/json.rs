//! Conversions between `google.protobuf.Struct`/`Value` and `serde_json`.
//!
//! Protobuf numbers are doubles; JSON has no NaN or infinity, so a non-finite number is an
//! error rather than a silent `null`.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// A protobuf value that has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteNumber {
    /// Where in the value the number sits, as a JSON pointer (`/a/0/b`).
    pub path: String,
}

impl std::fmt::Display for NonFiniteNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "non-finite number at `{}`", self.path)
    }
}

impl std::error::Error for NonFiniteNumber {}

/// Converts a `Struct` into a JSON object.
pub fn struct_to_json(s: &Struct) -> Result<Map<String, Json>, NonFiniteNumber> {
    let mut path = String::new();
    struct_at(s, &mut path)
}

/// Converts a `Value` into JSON (an unset kind is `null`).
pub fn value_to_json(v: &Value) -> Result<Json, NonFiniteNumber> {
    let mut path = String::new();
    value_at(v, &mut path)
}

fn struct_at(s: &Struct, path: &mut String) -> Result<Map<String, Json>, NonFiniteNumber> {
    let mut map = Map::with_capacity(s.fields.len());
    for (key, value) in &s.fields {
        let len = path.len();
        path.push('/');
        path.push_str(key);
        let json = value_at(value, path)?;
        path.truncate(len);
        map.insert(key.clone(), json);
    }
    Ok(map)
}

fn value_at(v: &Value, path: &mut String) -> Result<Json, NonFiniteNumber> {
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n).ok_or_else(|| NonFiniteNumber {
            path: if path.is_empty() { "/".to_owned() } else { path.clone() },
        })?,
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::StructValue(s)) => Json::Object(struct_at(s, path)?),
        Some(Kind::ListValue(list)) => {
            let mut items = Vec::with_capacity(list.values.len());
            for (i, item) in list.values.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                items.push(value_at(item, path)?);
                path.truncate(len);
            }
            Json::Array(items)
        }
    })
}

/// Integral doubles within 2^53 become JSON integers, so `3` round-trips as `3`, not `3.0`.
fn number(n: f64) -> Option<Json> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if !n.is_finite() {
        return None;
    }
    if n.fract() == 0.0 && n.abs() <= EXACT {
        #[allow(clippy::cast_possible_truncation)]
        return Some(Json::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Json::Number)
}

/// Converts a JSON object into a `Struct`.
pub fn json_to_struct(map: &Map<String, Json>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
    }
}

/// Converts JSON into a `Value`. Numbers become doubles (protobuf has no other kind).
pub fn json_to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// JSON round-trips through Struct unchanged, integers staying integers.
    #[test]
    fn round_trip() {
        let original = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -7}});
        let Json::Object(map) = &original else { unreachable!() };
        let back = struct_to_json(&json_to_struct(map)).map(Json::Object);
        assert_eq!(back, Ok(original));
    }

    /// A NaN is refused with the path where it sits.
    #[test]
    fn nan_is_an_error_naming_the_path() {
        let s = Struct {
            fields: [("a".to_owned(), json_to_value(&json!([1, 2])))]
                .into_iter()
                .chain([(
                    "b".to_owned(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![Value {
                                kind: Some(Kind::NumberValue(f64::NAN)),
                            }],
                        })),
                    },
                )])
                .collect(),
        };
        assert_eq!(
            struct_to_json(&s),
            Err(NonFiniteNumber {
                path: "/b/0".to_owned()
            })
        );
    }
}
