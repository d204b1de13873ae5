//! Error codes of `error` frames and HTTP errors, and WebSocket close codes.

use serde::Serialize;

/// The `code` of an `error` frame; the same codes name HTTP errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status of the same meaning.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::NotJoined => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl From<&chatmesh_broker::BrokerError> for ErrorCode {
    fn from(e: &chatmesh_broker::BrokerError) -> Self {
        use chatmesh_broker::BrokerError::*;
        match e {
            Unavailable(_) | Closed => ErrorCode::Unavailable,
            Invalid(_) => ErrorCode::BadRequest,
            Protocol(_) => ErrorCode::Internal,
        }
    }
}

/// WebSocket close codes the node sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The token expired while connected.
    pub const POLICY: u16 = 1008;
    pub const TOO_LARGE: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// Graceful shutdown: reconnect elsewhere and `join` with `since`.
    pub const RESTART: u16 = 1012;
    /// Slow consumer or overload.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The same user and device connected again.
    pub const REPLACED: u16 = 4009;

    /// The `code` label of `chatmesh_closes_total` for a code the node picked.
    /// A fixed set: a label per arbitrary number would let clients grow the
    /// metric without bound.
    pub fn label(code: u16) -> &'static str {
        match code {
            NORMAL => "1000",
            GOING_AWAY => "1001",
            PROTOCOL_ERROR => "1002",
            INVALID_PAYLOAD => "1007",
            POLICY => "1008",
            TOO_LARGE => "1009",
            INTERNAL => "1011",
            RESTART => "1012",
            TRY_AGAIN_LATER => "1013",
            REPLACED => "4009",
            _ => "other",
        }
    }

    /// The label of a client's own application code, echoed back.
    pub const ECHOED: &str = "echoed";
}
