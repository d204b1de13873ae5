//! The log's last line of defence for secrets: every log line passes through
//! [`Redacting`], which writes it with each secret of the config (the JWT
//! secret, the API keys, the broker passwords and tokens: [`Config::secrets`])
//! replaced by `***`.
//!
//! The node never logs a secret itself, but the client libraries it uses do
//! at their own debug level: async-nats prints the server URL it connects to,
//! password included. Filtering out their targets would also lose what
//! their logs are for, and would have to be redone for each library and
//! version; replacing the secrets in the written line holds for all of them.
//!
//! [`Config::secrets`]: crate::config::Config::secrets

use std::io::{self, Write};

use chatmesh_broker::support::REDACTED;
use tracing_subscriber::fmt::MakeWriter;

/// Secrets shorter than this are not searched for: replacing every `ab` of a
/// log would make it unreadable, and a 1–2 character secret protects nothing.
const MIN_SECRET: usize = 3;

/// A [`MakeWriter`] for stderr that redacts secrets (see the module docs).
#[derive(Debug, Clone)]
pub struct Redacting {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redacting {
    pub fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| s.len() >= MIN_SECRET);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `line` with every secret replaced.
    pub fn redact<'a>(&self, line: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let text = String::from_utf8_lossy(line);
        if !self.secrets.iter().any(|s| text.contains(s.as_str())) {
            return std::borrow::Cow::Borrowed(line);
        }
        let mut text = text.into_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), REDACTED);
        }
        std::borrow::Cow::Owned(text.into_bytes())
    }
}

/// One event's writer: the formatter hands it the whole formatted line in
/// one `write_all`, so a secret is never split between two writes.
pub struct Writer<'a> {
    redacting: &'a Redacting,
    out: io::Stderr,
}

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_all(&self.redacting.redact(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = Writer<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Writer {
            redacting: self,
            out: io::stderr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_whole_and_short_ones_ignored() {
        let r = Redacting::new(vec!["pw".into(), "s3cret".into(), "s3cret-longer".into()]);
        let line = b"url=nats://u:s3cret-longer@h key=s3cret pw=pw\n";
        assert_eq!(
            String::from_utf8_lossy(&r.redact(line)),
            "url=nats://u:***@h key=*** pw=pw\n"
        );
        assert!(matches!(
            r.redact(b"nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
