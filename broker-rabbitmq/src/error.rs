//! Errors: [`RabbitConfigError`] for a bad configuration, the check of
//! `broker.url`, and the mapping of lapin's errors.

use chatmesh_broker::support::ConfigError;
use chatmesh_broker::BrokerError;

/// Why a [`crate::RabbitBroker`] could not be created: see [`ConfigError`].
pub type RabbitConfigError = ConfigError;

/// The broker's name in configuration errors.
pub(crate) const BROKER: &str = "RabbitMQ";
/// The URL forms `broker.url` takes, for configuration errors.
pub(crate) const URL_FORMS: &str =
    "amqp://user:pass@host:port/vhost (several, comma-separated, for a RabbitMQ cluster)";

/// Checks one URL of `broker.url`: `amqp://[user:pass@]host[:port][/vhost]`.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("amqps://") {
        return Err("TLS (amqps://) is not built into this node; use amqp://".into());
    }
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| "expected amqp://user:pass@host:port/vhost".to_owned())?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err("the port is not a number from 1 to 65535".into());
        }
    }
    url.parse::<lapin::uri::AMQPUri>().map(|_| ())
}

/// `op` got no answer within the request timeout.
pub(crate) fn timed_out(op: &str) -> BrokerError {
    BrokerError::timed_out(BROKER, op, crate::link::REQUEST_TIMEOUT)
}

/// A lapin error of `op` as a broker error: the link is down or failing.
pub(crate) fn unavailable(op: &str, e: lapin::Error) -> BrokerError {
    BrokerError::unavailable(op, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for ok in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://h",
            "amqp://u:p@rabbit-1:5672/chat",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "h:5672",
            "amqps://h",
            "amqp://",
            "amqp://h:0",
            "amqp://h:x/v",
            "redis://h",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
