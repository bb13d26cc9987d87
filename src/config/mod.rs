//! The YAML configuration, in three layers (as in River): `schema` (serde types and
//! defaults; unknown keys rejected with key path and line), `lower` (everything serde cannot
//! check — references, duplicates, combinations, each value's syntax — reporting *every*
//! problem under its key path, while building the model) and `model`, the validated
//! runtime [`Config`] the rest of the crate works on. Schema types never leave this module.
//! Loading the certificates the config names is the TLS module's job ([`crate::tls`]),
//! reported the same way.

#[cfg(test)]
mod doc_sync;
mod lower;
mod model;
mod schema;
mod units;

pub(crate) use lower::icinga_policy;
#[cfg(test)]
pub(crate) use lower::{
    kea_from_yaml, listener_from_yaml, policy_from_yaml, server_from_yaml, server_keys,
};
pub use model::*;

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration, located by its key path (`upstreams.kea.tls.ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, with `[i]` for list items; empty when the whole file is at fault.
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file the problems are in.
    pub file: PathBuf,
    /// The problems, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem(s) found",
            self.file.display(),
            self.errors.len()
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
