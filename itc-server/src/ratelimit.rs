//! The request rate of each authenticated principal (`max_requests_per_second`): a token
//! bucket per principal holding a second's worth of calls, refilled continuously, taken
//! by [`crate::auth::AuthLayer`] once it knows the caller. A call past it answers
//! RESOURCE_EXHAUSTED with reason RATE_LIMITED and a RetryInfo, and runs nothing. Without authentication there is no principal to count, and no limit (the
//! server then listens on loopback only, or was told `--insecure`).
//!
//! Each call (a Subscribe or Heartbeat stream counts once, when it opens) takes a token;
//! the map holds one bucket per principal of the tokens file, so it stays small.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::Limit;

/// The buckets, shared by every connection; and each principal's Subscribe streams that
/// name no session (those that do are counted under their session by the core).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open session-less stream of a principal; counted until dropped.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    id: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = match self.streams.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(open) = streams.get_mut(&self.id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.id);
            }
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
            streams: Arc::default(),
        }
    }

    /// Counts a Subscribe stream of `id` that names no session, up to `max`
    /// (`max_subscriptions_per_session`: a principal is one session's worth).
    pub(crate) fn open_stream(&self, id: &str, max: usize) -> Result<StreamPermit, crate::error::CoreError> {
        let mut streams = match self.streams.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let open = streams.entry(id.to_owned()).or_insert(0);
        if *open >= max {
            return Err(crate::error::CoreError::limit(
                Limit::SubscriptionsPerSession,
                None,
                format!(
                    "`{id}` has {open} Subscribe streams open without a session, the limit \
                     (max_subscriptions_per_session); close one first"
                ),
            ));
        }
        *open += 1;
        Ok(StreamPermit {
            streams: self.streams.clone(),
            id: id.to_owned(),
        })
    }

    /// Takes a token of `id`'s bucket; false when it is empty.
    pub(crate) fn admit(&self, id: &str, now: Instant) -> bool {
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let bucket = buckets.entry(id.to_owned()).or_insert(Bucket {
            tokens: self.per_second,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl RateLimiter {
    /// Takes a token of `id`'s bucket now, or answers the RATE_LIMITED status.
    pub(crate) fn check(&self, id: &str) -> Result<(), tonic::Status> {
        if self.admit(id, Instant::now()) {
            return Ok(());
        }
        Err(crate::grpc::limit_status(
            Limit::RequestRate,
            None,
            format!(
                "`{id}` made more than max_requests_per_second ({}) calls in the last second; retry in a moment",
                self.per_second
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_second_of_calls_then_the_refill() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.admit("a", t0)));
        assert!(!limiter.admit("a", t0), "the bucket holds a second's worth");
        assert!(limiter.admit("b", t0), "each principal has its own");
        assert!(!limiter.admit("a", t0 + Duration::from_millis(300)));
        assert!(
            limiter.admit("a", t0 + Duration::from_millis(340)),
            "a third of a second refills one"
        );
        assert!((0..3).all(|_| limiter.admit("a", t0 + Duration::from_secs(5))));
        assert!(
            !limiter.admit("a", t0 + Duration::from_secs(5)),
            "never more than a second's worth"
        );
    }
}
