//! Errors: [`KafkaConfigError`] for a bad configuration, and the helpers that
//! turn rdkafka errors into [`BrokerError`]s.

use chatmesh_broker::support::ConfigError;
use chatmesh_broker::BrokerError;

/// Why a [`crate::KafkaBroker`] could not be created: see [`ConfigError`].
pub type KafkaConfigError = ConfigError;

/// The broker's name in configuration errors.
pub(crate) const BROKER: &str = "Kafka";
/// The URL forms `broker.url` takes, for configuration errors.
pub(crate) const URL_FORMS: &str = "host:port or host:port,host:port (a bootstrap list)";

/// Checks one bootstrap server of `broker.url`: `host:port`, optionally
/// written `kafka://host:port`.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let host_port = url.strip_prefix("kafka://").unwrap_or(url);
    if host_port.contains("://") {
        return Err("expected host:port (or kafka://host:port)".into());
    }
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_owned())?;
    if host.is_empty() || host.contains('/') || host.contains(',') {
        return Err("the host is empty or not a host name".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port is not a number from 1 to 65535".into()),
    }
}

/// The bootstrap list librdkafka takes: `host:port,host:port`.
pub(crate) fn bootstrap(urls: &[String]) -> String {
    let hosts: Vec<&str> = urls
        .iter()
        .map(|u| u.strip_prefix("kafka://").unwrap_or(u))
        .collect();
    hosts.join(",")
}

/// `op` got no answer within the request timeout.
pub(crate) fn timed_out(op: &str) -> BrokerError {
    BrokerError::timed_out("Kafka", op, crate::link::REQUEST_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_are_checked() {
        for ok in [
            "127.0.0.1:9092",
            "kafka-1:9092",
            "kafka://h:1",
            "[::1]:9092",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["", "h", ":9092", "h:0", "h:x", "nats://h:1", "h:70000"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(bootstrap(&["kafka://a:1".into(), "b:2".into()]), "a:1,b:2");
    }
}
