//! Go `encoding/json` semantics that serde does not have by default.

use serde_json::Value;

/// Removes `null` members from every object, recursively.
///
/// Go leaves a field at its zero value when the JSON holds `null`; with every struct here
/// `#[serde(default)]`, dropping the member gives serde the same behaviour.
pub(crate) fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
