//! Errors a broker returns, shaped so that callers can decide without knowing
//! which broker is behind the trait.

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or did not answer in time. Nothing was
    /// accepted; the client is told `unavailable`.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (for example a position from another broker).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The broker answered something this code does not understand.
    #[error("broker protocol error: {0}")]
    Protocol(String),
    /// The broker has been closed by this node.
    #[error("broker closed")]
    Closed,
}

impl BrokerError {
    /// True when the same call may succeed later (after a reconnect).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_))
    }
}
