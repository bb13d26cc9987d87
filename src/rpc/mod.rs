//! The Icinga 2 cluster side: netstring JSON-RPC links relayed to an upstream master.
//!
//! - [`codec`]: netstring framing with Icinga's reader rules.
//! - [`envelope`]: `method` / `id` and the depth limit, without building a tree.
//! - [`policy`]: who may send which method in which direction.
//! - [`relay`]: one link — identity, routing by SNI, the upstream connection made with the
//!   client's own identity, and the two pumps.
//!
//! Icinga identifies a cluster peer by the certificate of the directly connected TLS peer, so
//! the relay presents, downstream, the certificate for the endpoint the client dialled (by SNI,
//! see `tls.sni_certs`) and, upstream, a certificate for the client's own CN from `cert_dir`.

pub mod codec;
pub mod envelope;
pub mod policy;
pub mod relay;

pub use relay::Relay;

/// Icinga's cluster methods: the bounded `method` label of `gatehouse_rpc_messages_total`.
pub const KNOWN_METHODS: &[&str] = &[
    "icinga::Hello",
    "event::Heartbeat",
    "pki::RequestCertificate",
    "pki::UpdateCertificate",
    "config::Update",
    "config::UpdateObject",
    "config::DeleteObject",
    "log::SetLogPosition",
    "event::CheckResult",
    "event::SetNextCheck",
    "event::SetLastCheckStarted",
    "event::SetForceNextCheck",
    "event::SetForceNextNotification",
    "event::SetSuppressedNotifications",
    "event::SetSuppressedNotificationTypes",
    "event::SetNextNotification",
    "event::SetAcknowledgement",
    "event::ClearAcknowledgement",
    "event::SendNotifications",
    "event::NotificationSentUser",
    "event::NotificationSentToAllUsers",
    "event::SetStateBeforeSuppression",
    "event::SetRemovalInfo",
    "event::ExecuteCommand",
    "event::ExecutedCommand",
    "event::UpdateExecutions",
];

/// The metric label for a method: itself if known, `reply` for replies, else `other`.
pub fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "reply",
        Some(m) => KNOWN_METHODS
            .iter()
            .find(|k| **k == m)
            .copied()
            .unwrap_or("other"),
    }
}
