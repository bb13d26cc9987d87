//! The Icinga 2 cluster side: netstring JSON-RPC links relayed to an upstream master.
//!
//! - [`codec`]: netstring framing with Icinga's reader rules.
//! - [`envelope`]: `method` / `id` and the depth limit, without building a tree.
//! - [`policy`]: who may send which method in which direction.
//! - [`filter`]: [`filter::RpcFilter`], the per-message extension point; the method policy and
//!   the `cert_request` rewrite are built-in filters.
//! - [`identity`]: [`identity::IdentityMapper`], which certificate goes upstream for a link
//!   (`cert_dir` is the built-in one).
//! - [`relay`]: one link — identity, routing by SNI, the upstream connection made with the
//!   client's own identity, and the two pumps.
//!
//! Icinga identifies a cluster peer by the certificate of the directly connected TLS peer, so
//! the relay presents, downstream, the certificate for the endpoint the client dialled (by SNI,
//! see `tls.sni_certs`) and, upstream, a certificate for the client's own CN from `cert_dir`.

#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod envelope;
pub mod filter;
pub mod identity;
#[doc(hidden)]
pub mod policy;
#[doc(hidden)]
pub mod relay;

pub(crate) use relay::Relay;

/// The bounded `method` label values of `gatehouse_cluster_messages_total`: Icinga's cluster
/// methods, then `reply` (no method) and `other`.
pub(crate) const METHOD_LABELS: &[&str] = &[
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
    "event::ClearLastNotifiedStatePerUser",
    "event::UpdateLastNotifiedStatePerUser",
    "reply",
    "other",
];

/// Index into [`METHOD_LABELS`]: the method if known, `reply` for replies, else `other`.
pub(crate) fn method_index(method: Option<&str>) -> usize {
    let known = METHOD_LABELS.len() - 2;
    match method {
        None => known,
        Some(m) => METHOD_LABELS[..known]
            .iter()
            .position(|k| *k == m)
            .unwrap_or(known + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels() {
        assert_eq!(
            METHOD_LABELS[method_index(Some("event::CheckResult"))],
            "event::CheckResult"
        );
        assert_eq!(METHOD_LABELS[method_index(None)], "reply");
        assert_eq!(METHOD_LABELS[method_index(Some("evil::Thing"))], "other");
        assert_eq!(METHOD_LABELS[method_index(Some("reply"))], "other");
    }
}
