//! The crate's one error type for its public entry points and its extensions: what kind of
//! thing failed, what Gatehouse (or the extension) was doing (the file, key path, pid, peer or
//! decision point), and the cause.
//!
//! A configuration error keeps every problem found ([`ConfigErrors`]: file, then one line per
//! key path), because `gatehouse check` must report them all at once. Errors on the data path
//! are Pingora's own (`pingora_error::Error`), as its phases require.

use crate::config::ConfigErrors;
use std::fmt;

/// What kind of thing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration, or a file it names (certificate, key, CA, audit log).
    Config,
    /// Finding or signalling a running instance (`gatehouse reload`).
    Signal,
    /// Writing files (`gatehouse dev-certs`); starting a [`crate::testing::Instance`].
    Io,
    /// Making certificates (`gatehouse dev-certs`).
    Pki,
    /// An extension could not do its job: an [`crate::authz::Authorizer`] whose decision point
    /// is unreachable (the request is denied), an [`crate::http::filter::HttpFilter`] that will
    /// not send a request on (it fails with 500).
    Extension,
}

/// An error from a Gatehouse entry point.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    config: Option<ConfigErrors>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind`, saying what Gatehouse was doing.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Error {
        Error {
            kind,
            context: context.into(),
            config: None,
            source: None,
        }
    }

    /// An extension's failure ([`ErrorKind::Extension`]), saying what it was doing.
    ///
    /// ```
    /// let e = gatehouse::Error::extension("policy service: no answer")
    ///     .because(std::io::Error::from(std::io::ErrorKind::TimedOut));
    /// assert_eq!(e.kind(), gatehouse::ErrorKind::Extension);
    /// assert!(e.to_string().starts_with("policy service: no answer: "));
    /// ```
    pub fn extension(context: impl Into<String>) -> Error {
        Error::new(ErrorKind::Extension, context)
    }

    /// The same error, caused by `source`.
    pub fn because(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of thing failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What Gatehouse was doing.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Every problem in a configuration, when that is what failed.
    pub fn config_errors(&self) -> Option<&ConfigErrors> {
        self.config.as_ref()
    }
}

impl From<ConfigErrors> for Error {
    fn from(e: ConfigErrors) -> Error {
        Error {
            kind: ErrorKind::Config,
            context: e.file.display().to_string(),
            config: Some(e),
            source: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.config {
            // Already "file: N problem(s) found" and one line per key path.
            return c.fmt(f);
        }
        f.write_str(&self.context)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match (&self.config, &self.source) {
            (Some(c), _) => Some(c),
            (None, Some(s)) => Some(&**s),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    #[test]
    fn display_keeps_the_context_and_every_config_problem() {
        let e = Error::from(ConfigErrors {
            file: "/etc/gatehouse/g.yaml".into(),
            errors: vec![
                ConfigError::new("listeners[0].address", "`x` is not an IP:port address"),
                ConfigError::new("routes[0].upstream", "unknown upstream `kea`"),
            ],
        });
        assert_eq!(e.kind(), ErrorKind::Config);
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/gatehouse/g.yaml: 2 problem(s) found"),
            "{text}"
        );
        assert!(
            text.contains("  routes[0].upstream: unknown upstream `kea`"),
            "{text}"
        );
        let io = Error::new(ErrorKind::Io, "writing conf/dev-certs/ca.crt")
            .because(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(
            io.to_string(),
            "writing conf/dev-certs/ca.crt: permission denied"
        );
        assert!(std::error::Error::source(&io).is_some());
    }
}
