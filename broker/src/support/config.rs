//! [`ConfigError`]: why a broker could not be built from the node's config,
//! before any network I/O, and [`split_urls`], the one reading of a
//! comma-separated `broker.url`.

/// Why a broker could not be created. Nothing here touched the network: these
/// are all mistakes in `broker.url` or in how the broker is built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `broker.url` was empty.
    #[error("broker.url is empty: expected {expected}")]
    Empty {
        /// The URL forms the broker takes, for the message.
        expected: &'static str,
    },
    /// One URL of `broker.url` is not usable by this broker.
    #[error("broker.url: {url:?} is not a valid {broker} URL: {reason}")]
    BadUrl {
        broker: &'static str,
        url: String,
        reason: String,
    },
    /// A broker-specific option (or the namespace) cannot work; the reason
    /// names the config key.
    #[error("{reason}")]
    BadOption { reason: String },
    /// The broker spawns its connection task on the current tokio runtime.
    #[error("the {broker} broker must be created inside a tokio runtime")]
    NoRuntime { broker: &'static str },
}

/// The current tokio runtime, which a broker spawns its link task on.
pub fn runtime(broker: &'static str) -> Result<tokio::runtime::Handle, ConfigError> {
    tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime { broker })
}

/// `Err` naming `key` unless `v` is in `lo..=hi`: the range check of a
/// broker option.
pub fn in_range(key: &str, v: i64, lo: i64, hi: i64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key} must be from {lo} to {hi}, not {v}"))
    }
}

/// The URLs of a comma-separated `broker.url` (blanks around commas are
/// ignored), each checked by `check`, which says why one is unusable.
pub fn split_urls(
    url: &str,
    broker: &'static str,
    expected: &'static str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(ConfigError::Empty { expected });
    }
    for u in &urls {
        check(u).map_err(|reason| ConfigError::BadUrl {
            broker,
            url: u.clone(),
            reason,
        })?;
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_trims_and_checks_each() {
        let starts = |u: &str| {
            u.starts_with("x://")
                .then_some(())
                .ok_or_else(|| "only x://".to_owned())
        };
        assert_eq!(
            split_urls(" x://a:1 , x://b:2,", "X", "x://h:p", starts).expect("two"),
            ["x://a:1", "x://b:2"]
        );
        assert!(matches!(
            split_urls(" , ", "X", "x://h:p", starts),
            Err(ConfigError::Empty {
                expected: "x://h:p"
            })
        ));
        let e = split_urls("x://a:1,y://b", "X", "x://h:p", starts).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "broker.url: \"y://b\" is not a valid X URL: only x://"
        );
    }
}
