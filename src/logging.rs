//! Log lines for machines: `log_format: json`.
//!
//! Gatehouse logs through the `log` facade. With `log_format: json` the access log
//! (`gatehouse::access`, one record per request) and the cluster-link log (`gatehouse::cluster`,
//! link open and close) carry a JSON object as their message — built by serde_json, so every
//! client-chosen string (path, method, CN, SNI) is JSON-escaped and numbers stay numbers — and
//! mark the record with the key-value `json = ""` (`JSON_KEY`). Audit records sent to the
//! log target `gatehouse::audit` are JSON too and marked `json = "audit"`.
//!
//! What reaches the screen is the logger's business. The binary installs [`init`]: text is
//! env_logger's usual `[time LEVEL target] message`; JSON writes *every* record as one object
//! on one line: `time`, `level`, `target`, then the fields of a marked
//! record (or, for `json = "audit"`, the record under `audit`), else `message`. So a stream of
//! Gatehouse's stderr is JSON lines throughout, Pingora's own records included.
//!
//! An embedder with a logger of its own gets, in JSON mode, the JSON object as the message
//! (its own prefix in front), or installs the same line format on its env_logger:
//!
//! ```no_run
//! env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
//!     .format(gatehouse::logging::format_json)
//!     .init();
//! ```

use crate::config::LogFormat;
use log::kv::Key;
use log::Record;
use std::io::{self, Write};
use std::time::SystemTime;

/// The key-value that marks a record whose message is a JSON object: empty, its members are
/// the line's fields; otherwise the name of the member that holds it.
pub(crate) const JSON_KEY: &str = "json";

/// Installs the process logger: `RUST_LOG` filters (default `info`), stderr, lines in
/// `format`, Pingora's own warnings and errors sampled (`SampledPingora`). Fails if a logger
/// is already installed.
pub fn init(format: LogFormat) -> Result<(), log::SetLoggerError> {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(format_json);
    }
    let logger = b.build();
    let max = logger.filter();
    log::set_boxed_logger(Box::new(SampledPingora::new(logger)))?;
    log::set_max_level(max);
    Ok(())
}

/// What a graceful upgrade always logs on its way, said at INFO: Pingora's new process logs
/// ERROR "No incoming socket transfer" each second until the old one is sent SIGQUIT, and the
/// old one WARN "server not ready" until the new one listens. Either order of the two steps
/// produces them; neither is a fault.
fn upgrade_chatter(record: &Record<'_>) -> Option<&'static str> {
    if !record
        .target()
        .starts_with("pingora_core::server::transfer_fd")
    {
        return None;
    }
    let text = record.args().as_str().map(str::to_string);
    let text = text.unwrap_or_else(|| record.args().to_string());
    if text.starts_with("No incoming socket transfer") {
        Some("graceful upgrade: waiting for the running instance to hand its listening sockets over (it is sent SIGQUIT by `gatehouse upgrade`)")
    } else if text.starts_with("server not ready") {
        Some("graceful upgrade: waiting for the new process to listen on server.upgrade_sock")
    } else {
        None
    }
}

/// A logger in front of another that writes Pingora's own warnings and errors (targets
/// `pingora*`) once per target and level per 10 s, the next one saying how many were held back.
/// Pingora writes them per connection or request ("Fail to proxy: … Connection closed" for a
/// client that hangs up mid-head, for one), so a client could otherwise fill the log at will;
/// Gatehouse's own lines are sampled where a client can repeat them and pass through here.
pub(crate) struct SampledPingora<L> {
    inner: L,
    /// Per target: the error and the warning sampler.
    samplers: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<[Sampler; 2]>>>,
}

impl<L: log::Log> SampledPingora<L> {
    /// Samples Pingora's warnings and errors on their way to `inner`.
    pub fn new(inner: L) -> Self {
        SampledPingora {
            inner,
            samplers: Default::default(),
        }
    }

    /// The samplers of `target` (allocated once per target: Pingora's targets are its module
    /// paths, a few dozen at most).
    fn samplers(&self, target: &str) -> std::sync::Arc<[Sampler; 2]> {
        let mut all = self.samplers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get(target) {
            return s.clone();
        }
        let s = std::sync::Arc::new(std::array::from_fn(|_| {
            Sampler::new(std::time::Duration::from_secs(10))
        }));
        all.insert(target.to_string(), s.clone());
        s
    }
}

impl<L: log::Log> log::Log for SampledPingora<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if let Some(calm) = upgrade_chatter(record) {
            let info = log::Metadata::builder()
                .level(log::Level::Info)
                .target(record.target())
                .build();
            if self.inner.enabled(&info) {
                self.inner.log(
                    &Record::builder()
                        .args(format_args!("{calm}"))
                        .metadata(info)
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .build(),
                );
            }
            return;
        }
        if record.level() > log::Level::Warn
            || !record.target().starts_with("pingora")
            || !self.inner.enabled(record.metadata())
        {
            return self.inner.log(record);
        }
        let Some(more) = self.samplers(record.target())
            [usize::from(record.level() != log::Level::Error)]
        .admit_note() else {
            return;
        };
        if more.is_empty() {
            return self.inner.log(record);
        }
        self.inner.log(
            &Record::builder()
                .args(format_args!("{}{more}", record.args()))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        )
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Logs `line` at info on `target` as a JSON object marked with [`JSON_KEY`] (an access or
/// link line in `log_format: json`); `what` names it if it cannot be encoded.
pub(crate) fn info_json(target: &str, what: &str, line: &impl serde::Serialize) {
    match serde_json::to_string(line) {
        Ok(json) => log::info!(target: target, json = ""; "{json}"),
        Err(e) => log::error!(target: target, "cannot encode {what}: {e}"),
    }
}

/// An env_logger format: the line described above, with the current time.
pub fn format_json(buf: &mut env_logger::fmt::Formatter, record: &Record<'_>) -> io::Result<()> {
    // One write per record: env_logger buffers the formatter and writes it whole, and the
    // line is built here first so a failed encode never leaves half a line.
    let mut line = Vec::with_capacity(256);
    write_json_line(&mut line, SystemTime::now(), record)?;
    buf.write_all(&line)
}

/// Writes `record` as one JSON object and a newline: `time` (RFC 3339, UTC, milliseconds),
/// `level`, `target`, then the members of a message marked with [`JSON_KEY`] (or the message
/// under the member the mark names), else `message` as a string. A marked message that is
/// not a JSON object is written as `message` too, so the line is always one JSON document.
pub(crate) fn write_json_line(
    out: &mut impl Write,
    time: SystemTime,
    record: &Record<'_>,
) -> io::Result<()> {
    let head = format!(
        "{{\"time\":\"{}\",\"level\":\"{}\",\"target\":{}",
        humantime::format_rfc3339_millis(time),
        record.level().as_str(),
        json_string(record.target()),
    );
    out.write_all(head.as_bytes())?;
    let message = record.args().to_string();
    let member = record.key_values().get(Key::from_str(JSON_KEY));
    let object = member.is_some() && is_json_object(&message);
    match member.as_ref().and_then(|m| m.to_borrowed_str()) {
        Some("") if object => {
            // Validated above: `{…}`, possibly with space around its members.
            let inner = message.trim();
            let inner = inner[1..inner.len() - 1].trim();
            if !inner.is_empty() {
                out.write_all(b",")?;
                out.write_all(inner.as_bytes())?;
            }
        }
        Some(name) if object => {
            write!(out, ",{}:{}", json_string(name), message.trim())?;
        }
        _ => write!(out, ",\"message\":{}", json_string(&message))?,
    }
    out.write_all(b"}\n")
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Whether `s` is exactly one JSON object (checked without building it).
fn is_json_object(s: &str) -> bool {
    s.trim_start().starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampler_writes_one_line_per_window() {
        use std::time::Duration;

        let s = Sampler::new(Duration::from_secs(10));
        assert_eq!(s.admit(), Some(0)); // written
        assert_eq!(s.admit(), None); // held back, counted
        assert_eq!(s.admit(), None);
    }
    use serde_json::Value;

    fn line(record: &Record<'_>) -> Value {
        let mut out = Vec::new();
        write_json_line(&mut out, SystemTime::UNIX_EPOCH, record).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && !text[..text.len() - 1].contains('\n'),
            "{text:?}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn every_record_is_one_json_object_on_one_line() {
        let evil = "x\n[2026-01-01T00:00:00Z INFO  gatehouse::audit] {\"forged\":1}\u{7}";
        let plain = line(
            &Record::builder()
                .target("pingora_core::server")
                .level(log::Level::Warn)
                .args(format_args!("{evil}"))
                .build(),
        );
        assert_eq!(plain["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(plain["level"], "WARN");
        assert_eq!(plain["target"], "pingora_core::server");
        assert_eq!(plain["message"], evil);

        let fields = [(JSON_KEY, "")];
        let marked = line(
            &Record::builder()
                .target("gatehouse::access")
                .level(log::Level::Info)
                .key_values(&fields)
                .args(format_args!("{}", r#"{"status":200,"path":"/a\"b"}"#))
                .build(),
        );
        assert_eq!(marked["status"], 200);
        assert_eq!(marked["path"], "/a\"b");
        assert_eq!(marked["target"], "gatehouse::access");
        assert!(marked.get("message").is_none(), "{marked}");

        let nested = [(JSON_KEY, "audit")];
        let audit = line(
            &Record::builder()
                .target("gatehouse::audit")
                .level(log::Level::Info)
                .key_values(&nested)
                .args(format_args!("{}", r#"{"time":"t","kind":"kea"}"#))
                .build(),
        );
        assert_eq!(audit["audit"]["kind"], "kea");
        assert_eq!(audit["time"], "1970-01-01T00:00:00.000Z");

        // A mark on something that is not one object falls back to `message`.
        for text in ["{}", "not json", "{\"a\":1} trailing", "[1]"] {
            let v = line(
                &Record::builder()
                    .key_values(&fields)
                    .args(format_args!("{text}"))
                    .build(),
            );
            if text == "{}" {
                assert!(v.get("message").is_none(), "{v}");
            } else {
                assert_eq!(v["message"], text, "{v}");
            }
        }
    }
}

/// One log line per window for something a client can repeat at will (a failed handshake, a
/// refused connection): the first line of a window is written, the rest are counted, and the
/// next line written says how many were held back. So a flood writes a line every window, not
/// a line per connection.
#[derive(Debug)]
pub(crate) struct Sampler {
    window: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Sampler {
    /// One line per `window`.
    pub fn new(window: std::time::Duration) -> Sampler {
        Sampler {
            window,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// [`Sampler::admit`] as the end of the line to write: `Some("")`, or
    /// `Some(" (and N more like it in the last 10 s)")` after held-back lines; `None`: hold it
    /// back.
    pub fn admit_note(&self) -> Option<String> {
        self.admit().map(|held| {
            if held == 0 {
                String::new()
            } else {
                format!(
                    " (and {held} more like it in the last {} s)",
                    self.window.as_secs()
                )
            }
        })
    }

    /// `Some(n)`: write this line, saying `n` like it were held back since the last; `None`:
    /// hold it back.
    pub fn admit(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(last) if now.duration_since(last) < self.window => {
                st.1 += 1;
                None
            }
            _ => {
                let held = st.1;
                *st = (Some(now), 0);
                Some(held)
            }
        }
    }
}
