//! The request rate of each authenticated principal (`max_requests_per_second`): a token
//! bucket per principal holding a second's worth of calls, refilled continuously. A call
//! past it answers RESOURCE_EXHAUSTED with reason RATE_LIMITED and a RetryInfo, and runs
//! nothing. Without authentication there is no principal to count, and no limit (the
//! server then listens on loopback only, or was told `--insecure`).
//!
//! Each call (a Subscribe or Heartbeat stream counts once, when it opens) takes a token;
//! the map holds one bucket per principal of the tokens file, so it stays small.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use crate::auth::Principal;
use crate::error::Limit;

/// The buckets, shared by every connection.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
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
        }
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

/// Applies the limiter to every call that carries a principal.
#[derive(Debug, Clone)]
pub(crate) struct RateLayer {
    limiter: Option<Arc<RateLimiter>>,
}

impl RateLayer {
    /// `None`: no limit (authentication off).
    pub(crate) fn new(limiter: Option<Arc<RateLimiter>>) -> Self {
        Self { limiter }
    }
}

impl<S> tower_layer::Layer<S> for RateLayer {
    type Service = RateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service of [`RateLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RateService<S> {
    inner: S,
    limiter: Option<Arc<RateLimiter>>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RateService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures_util::future::Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let (Some(limiter), Some(principal)) = (&self.limiter, request.extensions().get::<Arc<Principal>>())
            && !limiter.admit(&principal.id, Instant::now())
        {
            let status = crate::grpc::limit_status(
                Limit::RequestRate,
                None,
                format!(
                    "`{}` made more than max_requests_per_second ({}) calls in the last second; retry in a moment",
                    principal.id, limiter.per_second
                ),
            );
            return futures_util::future::Either::Left(std::future::ready(Ok(status.into_http())));
        }
        futures_util::future::Either::Right(self.inner.call(request))
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
