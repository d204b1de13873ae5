//! Errors a broker returns, shaped so that callers can decide without knowing
//! which broker is behind the trait: the variant is the kind ("retry or give
//! up?"), and the [`Cause`] keeps what failed and the broker client's own
//! error as its `source`, so logs show the whole chain.

use std::error::Error as StdError;
use std::fmt;

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or did not answer in time. Nothing was
    /// accepted; the client is told `unavailable`.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The request itself is wrong (for example a position from another broker).
    #[error("invalid request: {0}")]
    Invalid(#[source] Cause),
    /// The broker answered something this code does not understand.
    #[error("broker protocol error: {0}")]
    Protocol(#[source] Cause),
    /// The broker has been closed by this node.
    #[error("broker closed")]
    Closed,
}

impl BrokerError {
    /// The link (not the request) failed in `op`: nothing was accepted. Keeps
    /// the client library's error as the source.
    pub fn unavailable(op: &str, cause: impl StdError + Send + Sync + 'static) -> BrokerError {
        BrokerError::Unavailable(Cause::new(op, cause))
    }

    /// `op` got no answer from `broker` within `timeout`.
    pub fn timed_out(broker: &str, op: &str, timeout: std::time::Duration) -> BrokerError {
        BrokerError::Unavailable(format!("{op}: no answer from {broker} within {timeout:?}").into())
    }

    /// True when the same call may succeed later (after a reconnect).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_))
    }

    /// The same kind and message, for each caller of one shared write (the
    /// client library's error stays with the first, in the log).
    pub fn shared(&self) -> BrokerError {
        let cause = |c: &Cause| Cause::from(c.to_string());
        match self {
            BrokerError::Unavailable(c) => BrokerError::Unavailable(cause(c)),
            BrokerError::Invalid(c) => BrokerError::Invalid(cause(c)),
            BrokerError::Protocol(c) => BrokerError::Protocol(cause(c)),
            BrokerError::Closed => BrokerError::Closed,
        }
    }
}

/// What failed (the operation, in words) and, when a client library said why,
/// its error.
#[derive(Debug)]
pub struct Cause {
    what: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Cause {
    /// A cause with the client library's error behind it.
    pub fn new(what: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<String> for Cause {
    fn from(what: String) -> Self {
        Self { what, source: None }
    }
}

impl From<&str> for Cause {
    fn from(what: &str) -> Self {
        what.to_owned().into()
    }
}

impl fmt::Display for Cause {
    /// `what: source` — the source's own text is part of the one-line message
    /// too, since most log lines print only the top error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cause_and_says_whether_to_retry() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = BrokerError::Unavailable(Cause::new("publish", io));
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "broker unavailable: publish: reset by peer");
        let cause = e.source().expect("the cause");
        let io = cause.source().expect("the client's error");
        assert_eq!(io.to_string(), "reset by peer");
        let e = BrokerError::Protocol("odd answer".into());
        assert!(!e.is_retryable() && e.source().and_then(|c| c.source()).is_none());
    }
}
