//! The YAML configuration: [`schema`] (serde types and defaults), [`units`] (durations,
//! sizes) and `validate` (loading, parsing, and everything serde cannot check).
//!
//! Parsing and validation are separate steps (as in River): serde turns the file into
//! [`Config`], rejecting unknown keys with the key path and line; [`Config::validate`] then
//! checks what serde cannot (references between sections, duplicates, combinations) and
//! reports *every* problem, each naming its key path. Loading the certificates the config
//! names is the TLS module's job ([`crate::tls`]), reported the same way.

pub mod schema;
pub mod units;
mod validate;

pub use schema::*;
pub use units::{Duration, Size};

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
