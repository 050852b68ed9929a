//! Request validation shared by every operation: each failure names its field.

use std::io::Write;

use super::{JsonMap, MAX_TEXT_BYTES};
use crate::error::CoreError;

/// The longest id.
pub(crate) const MAX_ID_LEN: usize = 128;

/// An id of a task, agent or session: 1–128 characters of `A-Z a-z 0-9 - _ . : @`.
pub(crate) fn id(field: &str, value: &str) -> Result<(), CoreError> {
    if value.is_empty() {
        return Err(CoreError::invalid(field, "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(CoreError::invalid(
            field,
            format!("is {} characters long; the maximum is {MAX_ID_LEN}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(CoreError::invalid(
            field,
            format!("contains {bad:?}; ids use letters, digits and - _ . : @"),
        ));
    }
    Ok(())
}

/// A required free text: not blank, at most [`MAX_TEXT_BYTES`].
pub(crate) fn required_text(field: &str, value: &str) -> Result<(), CoreError> {
    if value.trim().is_empty() {
        return Err(CoreError::invalid(field, "is required"));
    }
    text(field, value)
}

/// An optional free text: at most [`MAX_TEXT_BYTES`].
pub(crate) fn text(field: &str, value: &str) -> Result<(), CoreError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(CoreError::invalid(
            field,
            format!("is {} bytes long; the maximum is {MAX_TEXT_BYTES}", value.len()),
        ));
    }
    Ok(())
}

/// Progress: finite and within [0, 1].
pub(crate) fn progress(value: f64) -> Result<(), CoreError> {
    if !value.is_finite() || !(0.0..=1.0).contains(&value) {
        return Err(CoreError::invalid(
            "progress",
            format!("{value} is outside [0, 1]; report progress as a fraction (0.5 is half done)"),
        ));
    }
    Ok(())
}

/// The limits a structured payload must keep (`max_payload_bytes`, `max_payload_depth`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PayloadLimits {
    /// Largest, as JSON bytes.
    pub(crate) bytes: usize,
    /// Deepest nesting (a scalar is 0, `{"a": 1}` is 1, `{"a": [1]}` is 2).
    pub(crate) depth: usize,
}

/// A structured payload within `limits`.
pub(crate) fn payload(field: &str, value: Option<&JsonMap>, limits: PayloadLimits) -> Result<(), CoreError> {
    match value {
        None => Ok(()),
        Some(map) => {
            depth(field, map.values(), 1, limits.depth)?;
            size(field, map, limits.bytes)
        }
    }
}

/// A JSON value within `limits`.
pub(crate) fn value(field: &str, value: Option<&serde_json::Value>, limits: PayloadLimits) -> Result<(), CoreError> {
    match value {
        None => Ok(()),
        Some(v) => {
            depth(field, std::iter::once(v), 0, limits.depth)?;
            size(field, v, limits.bytes)
        }
    }
}

/// The values at `level` and below nest no deeper than `max` (iteratively: a hostile
/// payload cannot overflow the stack here).
fn depth<'a>(
    field: &str,
    values: impl Iterator<Item = &'a serde_json::Value>,
    level: usize,
    max: usize,
) -> Result<(), CoreError> {
    let mut pending: Vec<(&serde_json::Value, usize)> = values.map(|v| (v, level)).collect();
    while let Some((v, at)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Object(map) => Box::new(map.values()),
            serde_json::Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        let inner = at + 1;
        if inner > max {
            return Err(CoreError::limit(
                crate::error::Limit::PayloadDepth,
                Some(field),
                format!("invalid `{field}`: nests deeper than max_payload_depth ({max} levels)"),
            ));
        }
        pending.extend(children.map(|c| (c, inner)));
    }
    Ok(())
}

fn size<T: serde::Serialize>(field: &str, value: &T, max: usize) -> Result<(), CoreError> {
    let mut counter = Counter { bytes: 0, max };
    // The counter refuses writes past `max`, so measuring stops early on huge payloads.
    if serde_json::to_writer(&mut counter, value).is_err() || counter.bytes > max {
        return Err(CoreError::limit(
            crate::error::Limit::PayloadBytes,
            Some(field),
            format!("invalid `{field}`: is larger than max_payload_bytes ({max} bytes of JSON)"),
        ));
    }
    Ok(())
}

struct Counter {
    bytes: usize,
    max: usize,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len();
        if self.bytes > self.max {
            return Err(std::io::Error::other("payload too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscription filter: valid ids, lists of at most `max_entries` (`max_filter_entries`).
pub(crate) fn filter(filter: &super::Filter, max_entries: usize) -> Result<(), CoreError> {
    let lengths = [
        ("filter.task_ids", filter.task_ids.len()),
        ("filter.agent_ids", filter.agent_ids.len()),
        ("filter.event_types", filter.event_types.len()),
    ];
    for (field, len) in lengths {
        entries(field, len, max_entries)?;
    }
    for (field, list) in [
        ("filter.task_ids", &filter.task_ids),
        ("filter.agent_ids", &filter.agent_ids),
    ] {
        for value in list {
            id(field, value)?;
        }
    }
    Ok(())
}

/// A list of `len` entries in `field`, at most `max` (`max_filter_entries`).
pub(crate) fn entries(field: &str, len: usize, max: usize) -> Result<(), CoreError> {
    if len > max {
        return Err(CoreError::limit(
            crate::error::Limit::FilterEntries,
            Some(field),
            format!("invalid `{field}`: has {len} entries, more than max_filter_entries ({max})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Ids accept the documented characters and refuse others, naming the field.
    #[test]
    fn ids() {
        assert!(id("task_id", "worker_agent_task").is_ok());
        assert!(id("task_id", "3f2b0c1e-aaaa-bbbb-cccc-123456789012").is_ok());
        assert!(id("task_id", "agent@host:1.2").is_ok());
        for bad in ["", "has space", "slash/", "ünï", &"x".repeat(129)] {
            let err = id("task_id", bad).unwrap_err();
            assert!(
                matches!(err, CoreError::InvalidArgument { ref field, .. } if field == "task_id"),
                "{bad:?}"
            );
        }
    }

    /// Progress must be a finite fraction.
    #[test]
    fn progress_range() {
        for ok in [0.0, 0.5, 1.0] {
            assert!(progress(ok).is_ok());
        }
        for bad in [-0.01, 1.01, f64::NAN, f64::INFINITY, 50.0] {
            assert!(progress(bad).is_err(), "{bad}");
        }
    }

    /// Payload size counts encoded JSON bytes.
    #[test]
    fn payload_size() {
        let Some(map) = json!({"k": "x".repeat(100)}).as_object().cloned() else {
            unreachable!()
        };
        let limits = |bytes| PayloadLimits { bytes, depth: 8 };
        assert!(payload("data", Some(&map), limits(200)).is_ok());
        let err = payload("data", Some(&map), limits(50)).unwrap_err();
        assert!(err.to_string().contains("`data`") && err.to_string().contains("max_payload_bytes"));
        assert!(matches!(
            err,
            CoreError::LimitExceeded {
                limit: crate::error::Limit::PayloadBytes,
                ..
            }
        ));
    }

    /// Nesting is counted in objects and arrays, iteratively, for maps and values.
    #[test]
    fn payload_depth() {
        let limits = PayloadLimits {
            bytes: 1 << 20,
            depth: 3,
        };
        let map = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        assert!(payload("data", Some(&map(json!({"a": {"b": [1]}}))), limits).is_ok());
        let err = payload("data", Some(&map(json!({"a": {"b": [[1]]}}))), limits).unwrap_err();
        assert!(
            matches!(
                err,
                CoreError::LimitExceeded {
                    limit: crate::error::Limit::PayloadDepth,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("max_payload_depth (3 levels)"), "{err}");
        assert!(value("result", Some(&json!([[[1]]])), limits).is_ok());
        assert!(value("result", Some(&json!([[[[1]]]])), limits).is_err());
        assert!(value("result", Some(&json!("flat")), PayloadLimits { bytes: 100, depth: 0 }).is_ok());
        // Deep enough to overflow a recursive walk's stack: refused, not crashed.
        let mut deep = json!(1);
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]); // (json! would copy it recursively)
        }
        assert!(value("result", Some(&deep), limits).is_err());
        std::mem::forget(deep); // its recursive drop would overflow the stack
    }

    /// Filter lists are bounded by the setting, each naming its field.
    #[test]
    fn filter_entries() {
        let filter = super::super::Filter {
            agent_ids: vec!["a".into(), "b".into(), "c".into()],
            ..Default::default()
        };
        assert!(filter_ok(&filter, 3));
        let err = super::filter(&filter, 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("`filter.agent_ids`: has 3 entries, more than max_filter_entries (2)"),
            "{err}"
        );
    }

    fn filter_ok(filter: &super::super::Filter, max: usize) -> bool {
        super::filter(filter, max).is_ok()
    }
}
