//! Errors: [`NatsConfigError`] for a bad configuration, and the helpers that
//! turn async-nats errors into [`BrokerError`]s.

use std::fmt::Display;

use chatmesh_broker::support::ConfigError;
use chatmesh_broker::BrokerError;

/// Why a [`crate::NatsBroker`] could not be created: see [`ConfigError`].
pub type NatsConfigError = ConfigError;

/// The broker's name in configuration errors.
pub(crate) const BROKER: &str = "NATS";
/// The URL forms `broker.url` takes, for configuration errors.
pub(crate) const URL_FORMS: &str = "nats://host:port or nats://h:p1,nats://h:p2,…";

/// Checks one server URL of `broker.url`: `nats://host:port` (or `tls://`);
/// the error says why not.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let bad = |reason: &str| reason.to_owned();
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| bad("only nats:// (or tls://) URLs are supported"))?;
    // Credentials are allowed (`nats://user:pass@host:port`); the host part follows `@`.
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    let host_port = host_port.trim_end_matches('/');
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))
        .and_then(|p| if p == 0 { Err(bad("port 0")) } else { Ok(()) })?;
    url.parse::<async_nats::ServerAddr>()
        .map_err(|e| bad(&e.to_string()))?;
    Ok(())
}

/// `op` got no answer within the request timeout.
pub(crate) fn timed_out(op: &str) -> BrokerError {
    BrokerError::timed_out("NATS", op, crate::link::REQUEST_TIMEOUT)
}

/// NATS answered something this code does not understand.
pub(crate) fn protocol(op: &str, cause: impl Display) -> BrokerError {
    BrokerError::Protocol(format!("{op}: {cause}").into())
}

/// Whether a JetStream error is a compare-and-set conflict: the stream's
/// last sequence for the subject was not the one expected. The server answers
/// code 10071 ("wrong last sequence: N") or, on a clustered stream, 10164
/// ("wrong last sequence"); async-nats 0.51 gives only the first its conflict
/// kind, so the cause chain is searched for either code.
pub(crate) fn is_conflict(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::{Error, ErrorCode};
    const CODES: [ErrorCode; 2] = [
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
    ];
    std::iter::successors(Some(e), |e| e.source())
        .filter_map(|e| e.downcast_ref::<Error>())
        .any(|e| CODES.contains(&e.error_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for ok in [
            "nats://127.0.0.1:4222",
            "nats://host:1",
            "tls://h:4443",
            "nats://u:p@h:4222",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:4222",
            "http://h:1",
            "nats://h",
            "nats://:4222",
            "nats://h:notaport",
            "nats://h:0",
            "nats://h:70000",
            "redis://h:1",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
