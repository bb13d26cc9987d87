//! The audit log: one JSON object per line for every Kea command (allowed, denied or
//! malformed) and every JSON-RPC message the relay denied.
//!
//! Destination: the file in `audit.path` (appended, one `write` per line so concurrent
//! records never interleave), or the log target `gatehouse::audit`.

use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

/// Where audit records go.
pub struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    /// Appends to `path`, or logs to `gatehouse::audit` when `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        Ok(Audit { file })
    }

    /// Records one event; `time` is added first. A failing write is logged, never fatal.
    pub fn record(&self, fields: Map<String, Value>) {
        let mut obj = Map::with_capacity(fields.len() + 1);
        obj.insert(
            "time".into(),
            Value::String(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        obj.extend(fields);
        let line = Value::Object(obj).to_string();
        match &self.file {
            Some(f) => {
                let mut buf = line.into_bytes();
                buf.push(b'\n');
                let result = match f.lock() {
                    Ok(mut file) => file.write_all(&buf),
                    Err(poisoned) => poisoned.into_inner().write_all(&buf),
                };
                if let Err(e) = result {
                    log::error!(target: "gatehouse::audit", "cannot write the audit log: {e}");
                }
            }
            None => log::info!(target: "gatehouse::audit", "{line}"),
        }
    }
}
