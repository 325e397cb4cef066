//! The HTTP side every connector shares: a pooled reqwest client with timeouts, and retries of
//! what is worth retrying (throttling, 5xx, timeouts, bodies that do not parse) with bounded
//! exponential back-off and jitter, honouring `Retry-After` when the API sends it.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};

use super::CrmError;

/// Retry and timeout settings (`[crm.<source>]` in the configuration).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Seconds before a request without an answer is abandoned (and retried).
    pub timeout_secs: f64,
    /// Tries per request, the first included.
    pub max_attempts: usize,
    /// First back-off in milliseconds; it doubles per try, with jitter.
    pub backoff_ms: u64,
    /// Longest wait between tries in seconds, `Retry-After` included.
    pub max_backoff_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 30.0,
            max_attempts: 6,
            backoff_ms: 500,
            max_backoff_secs: 60,
        }
    }
}

/// A failed try, as the retry loop sees it.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Worth another try, after `retry_after` when the API said so.
    Transient {
        /// What went wrong, for the error if the tries run out.
        what: String,
        /// The API's own wait, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Not worth retrying.
    Fatal(CrmError),
}

/// A client for one connector.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) settings: HttpSettings,
    pub(crate) source: String,
}

impl Http {
    pub(crate) fn new(source: &str, settings: HttpSettings) -> Result<Self, CrmError> {
        // reqwest is built without a default crypto provider (one provider, ring, for the
        // whole process); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(settings.timeout_secs.max(0.001)))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(4)
            .user_agent(concat!("tierwise/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CrmError::Setup(format!("{source}: HTTP client: {e}")))?;
        Ok(Self {
            client,
            settings,
            source: source.to_owned(),
        })
    }

    /// Runs `try_once` until it succeeds, fails fatally, or the tries run out.
    pub(crate) async fn retrying<T, F, Fut>(&self, what: &str, try_once: F) -> Result<T, CrmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let cap = Duration::from_secs(self.settings.max_backoff_secs);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.backoff_ms))
            .with_max_delay(cap)
            .with_max_times(self.settings.max_attempts.saturating_sub(1))
            .with_jitter();
        let result = try_once
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, Attempt::Transient { .. }))
            .adjust(move |e, planned| match e {
                Attempt::Transient {
                    retry_after: Some(wait),
                    ..
                } => planned.map(|_| (*wait).min(cap)),
                _ => planned,
            })
            .notify(|e, wait| {
                if let Attempt::Transient { what: why, .. } = e {
                    tracing::warn!(source = %self.source, request = what, error = %why, wait_ms = wait.as_millis() as u64, "retrying");
                }
            })
            .await;
        result.map_err(|e| match e {
            Attempt::Fatal(error) => error,
            Attempt::Transient { what: why, .. } => CrmError::GaveUp {
                source_name: self.source.clone(),
                what: what.to_owned(),
                attempts: self.settings.max_attempts,
                last: why,
            },
        })
    }
}

/// What a transport error is, without its URL (which may carry a token in a query string).
pub(crate) fn transport_error(e: reqwest::Error) -> Attempt {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    Attempt::Transient {
        what: format!("{kind}: {}", e.without_url()),
        retry_after: None,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these APIs).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// A header as a number.
pub(crate) fn header_number(headers: &reqwest::header::HeaderMap, name: &str) -> Option<f64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}
