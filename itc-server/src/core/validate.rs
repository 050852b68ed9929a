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

/// A structured payload no larger than `max` bytes once encoded as JSON.
pub(crate) fn payload(field: &str, value: Option<&JsonMap>, max: usize) -> Result<(), CoreError> {
    match value {
        None => Ok(()),
        Some(map) => size(field, map, max),
    }
}

/// A JSON value no larger than `max` bytes once encoded.
pub(crate) fn value(field: &str, value: Option<&serde_json::Value>, max: usize) -> Result<(), CoreError> {
    match value {
        None => Ok(()),
        Some(v) => size(field, v, max),
    }
}

fn size<T: serde::Serialize>(field: &str, value: &T, max: usize) -> Result<(), CoreError> {
    let mut counter = Counter { bytes: 0, max };
    // The counter refuses writes past `max`, so measuring stops early on huge payloads.
    if serde_json::to_writer(&mut counter, value).is_err() || counter.bytes > max {
        return Err(CoreError::invalid(
            field,
            format!("is larger than max_payload_bytes ({max} bytes of JSON)"),
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

/// The most entries one filter list may hold.
pub(crate) const MAX_FILTER_ENTRIES: usize = 1000;

/// A subscription filter: valid ids, bounded lists.
pub(crate) fn filter(filter: &super::Filter) -> Result<(), CoreError> {
    for (field, list) in [
        ("filter.task_ids", &filter.task_ids),
        ("filter.agent_ids", &filter.agent_ids),
    ] {
        if list.len() > MAX_FILTER_ENTRIES {
            return Err(CoreError::invalid(
                field,
                format!("has {} entries; the maximum is {MAX_FILTER_ENTRIES}", list.len()),
            ));
        }
        for value in list {
            id(field, value)?;
        }
    }
    if filter.event_types.len() > MAX_FILTER_ENTRIES {
        return Err(CoreError::invalid("filter.event_types", "has too many entries"));
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
        assert!(payload("data", Some(&map), 200).is_ok());
        let err = payload("data", Some(&map), 50).unwrap_err();
        assert!(err.to_string().contains("`data`"));
    }
}
