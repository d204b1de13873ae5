//! [`ConfigError`]: why a broker could not be built from the node's config,
//! before any network I/O, [`split_urls`], the one reading of a
//! comma-separated `broker.url`, and [`redact_url`], the one way a URL is
//! shown: its password or token never reaches a log line, an error or
//! `--check-config`.

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
        check(u).map_err(|reason| bad_url(broker, u, &reason))?;
    }
    Ok(urls)
}

/// A [`ConfigError::BadUrl`] that shows `url` and `reason` redacted: the
/// client libraries' parse errors may quote the URL they were given.
pub fn bad_url(broker: &'static str, url: &str, reason: &str) -> ConfigError {
    ConfigError::BadUrl {
        broker,
        url: redact_url(url),
        reason: redact_in(reason, url),
    }
}

/// What replaces a secret wherever the node shows one.
pub const REDACTED: &str = "***";

/// `url` with the secret of its user info replaced by [`REDACTED`]: the
/// password of `scheme://user:pass@host`, or all of `scheme://token@host`
/// (NATS takes a bare token there). A comma-separated list is redacted URL by
/// URL. The user info ends at the last `@`, so a password holding `/` or `@`
/// is still hidden (an `@` later in a path hides more than needed, never less).
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((start, info)) = user_info(url) else {
        return url.to_owned();
    };
    let shown = match info.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_owned(),
    };
    format!("{}{shown}{}", &url[..start], &url[start + info.len()..])
}

/// Where the user info of `url` starts, and the user info itself (before the
/// last `@` after `://`, or after the start when there is no scheme).
fn user_info(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = url[start..].rfind('@')?;
    Some((start, &url[start..start + at]))
}

/// The secrets of a (comma-separated) `broker.url`: each password or bare
/// token as written, and percent-decoded when that differs, since client
/// libraries show either. For a log filter that must catch them anywhere.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    for one in url.split(',') {
        let Some((_, info)) = user_info(one.trim()) else {
            continue;
        };
        let secret = info.split_once(':').map_or(info, |(_, pass)| pass);
        if secret.is_empty() {
            continue;
        }
        let decoded = percent_decode(secret);
        found.push(secret.to_owned());
        if decoded != secret {
            found.push(decoded);
        }
    }
    found
}

/// `%XX` sequences decoded, anything else (and a broken `%`) kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with the secret of `url` (its password, or a bare token) replaced
/// by [`REDACTED`], and `url` itself shown redacted.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    for one in url.split(',') {
        let Some((_, info)) = user_info(one) else {
            continue;
        };
        out = out.replace(one, &redact_one(one));
        let secret = info.split_once(':').map_or(info, |(_, pass)| pass);
        if !secret.is_empty() {
            out = out.replace(secret, REDACTED);
        }
    }
    out
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

    #[test]
    fn urls_are_shown_without_their_secrets() {
        for (url, shown) in [
            ("redis://h:1", "redis://h:1"),
            ("redis://user:pa55@h:1", "redis://user:***@h:1"),
            ("redis://:pa55@h:1/0", "redis://:***@h:1/0"),
            ("nats://t0ken@h:4222", "nats://***@h:4222"),
            ("amqp://u:p/a@ss@h:5672/vh", "amqp://u:***@h:5672/vh"),
            (
                "amqp://a:s1@h:1,amqp://b:s2@k:2",
                "amqp://a:***@h:1,amqp://b:***@k:2",
            ),
            ("h:9092,k:9092", "h:9092,k:9092"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_of_urls_as_written_and_decoded() {
        assert_eq!(
            url_secrets("redis://u:p%40ss@h:1, nats://tok@h:2,h:3"),
            ["p%40ss", "p@ss", "tok"]
        );
        assert!(url_secrets("redis://h:1").is_empty());
        assert!(url_secrets("redis://u:@h:1").is_empty());
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn a_bad_url_error_never_quotes_the_password() {
        let quoting = |u: &str| Err::<(), _>(format!("cannot parse {u} (near `pa55`)"));
        let e = split_urls("x://user:pa55@h:bad", "X", "x://h:p", quoting).expect_err("bad");
        let line = e.to_string();
        assert!(!line.contains("pa55"), "{line}");
        assert!(line.contains("x://user:***@h:bad"), "{line}");
    }
}
