//! Cluster message filters: the relay's extension point, and how its own YAML features are
//! built ([`MethodPolicy`] for `cluster.policy`, [`CertRequest`] for the `cert_request`
//! rewrite).
//!
//! A filter runs synchronously on every message it declared an [`Interest`] in, in both
//! directions, and borrows what the relay already parsed (the frame's bytes and its
//! [`Envelope`]): a relay moving a million messages a second cannot afford an allocation or a
//! boxed future per message. Filters that do not want a message cost nothing for it. The
//! built-in filters run first, called directly (static dispatch); filters added with
//! [`crate::Gatehouse::with_rpc_filter`] run after them, in the order added. The first action
//! other than [`Action::Forward`] / [`Action::Rewrite`] ends the chain; a rewrite is what the
//! next filter sees.

use super::envelope::{self, Envelope};
use super::policy::{Direction, Policy, Verdict};
use crate::authz::Identity;
use crate::config::Toward;
use boring::x509::X509;
use std::borrow::Cow;

/// The link a message travels on, as filters see it.
#[derive(Debug, Clone, Copy)]
pub struct LinkInfo<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The client: its verified certificate, or anonymous.
    pub identity: Identity<'a>,
    /// The certificate the client presented, verified or not (enrolling agents present a
    /// self-signed one).
    pub client_cert: Option<&'a X509>,
    /// The SNI the client sent (the endpoint it dialled), `""` when none.
    pub sni: &'a str,
    /// The client's address.
    pub peer: &'a str,
    /// Where the upstream sits in Icinga's hierarchy (`cluster.routes[].toward`): with
    /// `Child`, messages from the client travel down the hierarchy.
    pub toward: Toward,
    /// The certificate the upstream presented (set once it is connected): on a `Child` route,
    /// the agent's own.
    pub upstream_cert: Option<&'a X509>,
}

impl LinkInfo<'_> {
    /// `dir` (client → upstream or back) as a way through Icinga's hierarchy: `Upstream` =
    /// toward the parent.
    pub fn hierarchy(&self, dir: Direction) -> Direction {
        match (self.toward, dir) {
            (Toward::Parent, d) => d,
            (Toward::Child, Direction::Upstream) => Direction::Downstream,
            (Toward::Child, Direction::Downstream) => Direction::Upstream,
        }
    }
}

/// One cluster message, framed and enveloped.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    direction: Direction,
    payload: &'a [u8],
    envelope: &'a Envelope<'a>,
}

impl<'a> Message<'a> {
    /// A message travelling in `direction`; `envelope` must be `payload`'s.
    pub fn new(direction: Direction, payload: &'a [u8], envelope: &'a Envelope<'a>) -> Self {
        Message {
            direction,
            payload,
            envelope,
        }
    }

    /// Which way it travels.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// `method`; `None` for replies.
    pub fn method(&self) -> Option<&str> {
        self.envelope.method.as_deref()
    }

    /// Whether it carries a non-null `id` (a request expecting a reply, or a reply).
    pub fn has_id(&self) -> bool {
        self.envelope.has_id
    }

    /// The JSON payload as received (valid, an object, depth ≤ 32).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The bytes of the top-level `params` value, if present.
    pub fn params(&self) -> Option<&'a [u8]> {
        self.envelope
            .params
            .as_ref()
            .map(|r| &self.payload[r.clone()])
    }

    /// The envelope (offsets of `params` and of the closing brace, for splicing).
    pub fn envelope(&self) -> &'a Envelope<'a> {
        self.envelope
    }
}

/// What a filter decides for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pass it on (to the next filter, then the other side).
    Forward,
    /// Pass on this payload instead (a JSON object; Gatehouse frames it). The next filter
    /// sees the new payload; one that is not a valid message closes the link.
    Rewrite(Vec<u8>),
    /// Drop it silently (counted as `dropped`; not a policy violation).
    Drop,
    /// Refuse it: not forwarded, logged, audited and counted as `denied`, and counted
    /// against `cluster.max_violations`. The text is the reason.
    Deny(Cow<'static, str>),
    /// Answer it at the edge: this payload goes back to the sender, nothing goes on.
    Answer(Vec<u8>),
    /// Close the link, with the reason for the log.
    Close(Cow<'static, str>),
}

/// Which messages a filter wants to see: directions and, optionally, methods.
#[derive(Debug, Clone)]
pub struct Interest {
    upstream: bool,
    downstream: bool,
    methods: Option<Vec<String>>,
    replies: bool,
}

impl Interest {
    /// Every message, both ways, replies included.
    pub fn all() -> Interest {
        Interest {
            upstream: true,
            downstream: true,
            methods: None,
            replies: true,
        }
    }

    /// Only these methods (exact names), both ways; no replies.
    pub fn methods<I, S>(methods: I) -> Interest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Interest {
            methods: Some(methods.into_iter().map(Into::into).collect()),
            replies: false,
            ..Interest::all()
        }
    }

    /// Only messages from the client toward the upstream.
    pub fn upstream_only(mut self) -> Interest {
        self.downstream = false;
        self
    }

    /// Only messages from the upstream toward the client.
    pub fn downstream_only(mut self) -> Interest {
        self.upstream = false;
        self
    }

    /// The (direction, method) pairs asked for by name; `None` when it takes every method or
    /// replies.
    pub(crate) fn named(&self) -> Option<Vec<(Direction, &str)>> {
        if self.replies {
            return None;
        }
        let methods = self.methods.as_ref()?;
        let dirs = [
            (self.upstream, Direction::Upstream),
            (self.downstream, Direction::Downstream),
        ];
        Some(
            dirs.iter()
                .filter(|(on, _)| *on)
                .flat_map(|(_, d)| methods.iter().map(move |m| (*d, m.as_str())))
                .collect(),
        )
    }

    /// Whether a message in `direction` with `method` is wanted.
    pub fn wants(&self, direction: Direction, method: Option<&str>) -> bool {
        let dir = match direction {
            Direction::Upstream => self.upstream,
            Direction::Downstream => self.downstream,
        };
        dir && match (method, &self.methods) {
            (None, _) => self.replies,
            (Some(_), None) => true,
            (Some(m), Some(list)) => list.iter().any(|l| l == m),
        }
    }
}

/// A cluster message filter.
///
/// ```
/// use gatehouse::cluster::filter::{Action, Interest, LinkInfo, Message, RpcFilter};
///
/// /// Answers `example::Ping` at the edge; every other message is untouched.
/// struct Ping;
///
/// impl RpcFilter for Ping {
///     fn name(&self) -> &str {
///         "ping"
///     }
///     fn interest(&self) -> Interest {
///         Interest::methods(["example::Ping"]).upstream_only()
///     }
///     fn on_message(&self, _link: &LinkInfo<'_>, _msg: &Message<'_>) -> Action {
///         Action::Answer(br#"{"jsonrpc":"2.0","method":"example::Pong","params":{}}"#.to_vec())
///     }
/// }
/// ```
pub trait RpcFilter: Send + Sync + 'static {
    /// A short name for logs and audit records.
    fn name(&self) -> &str;

    /// The messages this filter wants; the relay asks once, when the filter is added.
    fn interest(&self) -> Interest {
        Interest::all()
    }

    /// Decides one message.
    fn on_message(&self, link: &LinkInfo<'_>, msg: &Message<'_>) -> Action;
}

/// `cluster.policy` (or Icinga's own rules when it is absent) as a filter.
#[doc(hidden)]
pub struct MethodPolicy(Policy);

impl MethodPolicy {
    /// The given policy.
    pub fn new(policy: Policy) -> Self {
        MethodPolicy(policy)
    }

    /// Whether `method` in `dir` is denied to an anonymous caller and to an authenticated one
    /// whatever its name (probed with a CN no rule names).
    fn denies_everyone(&self, dir: Direction, method: &str) -> bool {
        use crate::authz::Identity;
        static PROBE: std::sync::OnceLock<Option<crate::identity::ClientCert>> =
            std::sync::OnceLock::new();
        let probe = PROBE.get_or_init(|| {
            crate::pki::self_signed(&crate::pki::CertSpec::new("gatehouse-policy-probe"))
                .ok()
                .map(|i| crate::identity::ClientCert::from_x509(i.cert, true))
        });
        let denied = |who| {
            matches!(
                self.0.decide(who, dir, Some(method)),
                super::policy::Verdict::Deny(_)
            )
        };
        denied(Identity::Anonymous)
            && probe
                .as_ref()
                .is_some_and(|c| denied(Identity::Verified(c)))
    }
}

impl RpcFilter for MethodPolicy {
    fn name(&self) -> &str {
        "cluster.policy"
    }

    fn on_message(&self, link: &LinkInfo<'_>, msg: &Message<'_>) -> Action {
        match self
            .0
            .decide(link.identity, link.hierarchy(msg.direction), msg.method())
        {
            Verdict::Allow => Action::Forward,
            Verdict::Deny(rule) => Action::Deny(Cow::Owned(format!("cluster.policy[{rule}]"))),
        }
    }
}

/// The enrollment rewrite: `pki::RequestCertificate` goes upstream with the client's own
/// certificate in `params.cert_request`, or the master would judge (and maybe sign) the
/// edge's certificate; oversized requests and requests without a client certificate are
/// denied.
#[doc(hidden)]
pub struct CertRequest {
    max: usize,
}

impl CertRequest {
    /// With `max` = `cluster.limits.certificate_request_size`.
    pub fn new(max: usize) -> Self {
        CertRequest { max }
    }
}

impl RpcFilter for CertRequest {
    fn name(&self) -> &str {
        "cert_request"
    }

    fn interest(&self) -> Interest {
        // Both ways: on a `toward: child` route the agent's requests come back along the link.
        Interest::methods(["pki::RequestCertificate"])
    }

    fn on_message(&self, link: &LinkInfo<'_>, msg: &Message<'_>) -> Action {
        // Only requests travelling up the hierarchy (to whoever signs) are the child's.
        if link.hierarchy(msg.direction()) != Direction::Upstream {
            return Action::Forward;
        }
        // The requester's certificate: the client's, or on a child route the agent's, as it
        // presented itself to Gatehouse's upstream connection.
        let requester = match link.toward {
            Toward::Parent => link.client_cert,
            Toward::Child => link.upstream_cert,
        };
        if msg.payload().len() > self.max {
            return Action::Deny(Cow::Owned(format!(
                "larger than {} bytes (cluster.limits.certificate_request_size)",
                self.max
            )));
        }
        match with_cert_request(msg.payload(), msg.envelope(), requester) {
            Ok(Some(p)) => Action::Rewrite(p),
            Ok(None) => Action::Forward,
            Err(why) => Action::Deny(Cow::Borrowed(why)),
        }
    }
}

/// Puts the client's certificate into `params.cert_request` unless the client set a
/// non-empty one (a satellite forwarding a request does): `null`, `""` or any non-string
/// counts as not set. Only that field is spliced, from the envelope's offsets: the message is
/// never parsed into a tree. Returns the new payload; `Ok(None)`: forward unchanged;
/// `Err`: must not be forwarded.
pub(crate) fn with_cert_request(
    payload: &[u8],
    env: &Envelope<'_>,
    client_cert: Option<&X509>,
) -> Result<Option<Vec<u8>>, &'static str> {
    let params = match &env.params {
        None => None,
        Some(span) => {
            let obj = &payload[span.clone()];
            if obj.first() != Some(&b'{') {
                return Err("certificate request params is not an object");
            }
            let members =
                envelope::members(obj).map_err(|_| "unparseable certificate request params")?;
            let set = members.iter().any(|m| {
                let v = &obj[m.value.clone()];
                m.key == "cert_request" && v.len() > 2 && v[0] == b'"'
            });
            if set {
                return Ok(None);
            }
            Some((span.clone(), obj, members))
        }
    };
    let cert =
        client_cert.ok_or("certificate request from a client that presented no certificate")?;
    let pem = cert
        .to_pem()
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or("cannot encode the client's certificate")?;
    let field = format!("\"cert_request\":{}", serde_json::Value::String(pem));
    let mut out = Vec::with_capacity(payload.len() + field.len() + 16);
    match params {
        // The method is a member, so the object is not empty: a comma goes first.
        None => {
            out.extend_from_slice(&payload[..env.close]);
            out.extend_from_slice(b",\"params\":{");
            out.extend_from_slice(field.as_bytes());
            out.push(b'}');
            out.extend_from_slice(&payload[env.close..]);
        }
        Some((span, obj, members)) => {
            out.extend_from_slice(&payload[..span.start]);
            out.push(b'{');
            for m in members.iter().filter(|m| m.key != "cert_request") {
                out.extend_from_slice(&obj[m.span.clone()]);
                out.push(b',');
            }
            out.extend_from_slice(field.as_bytes());
            out.push(b'}');
            out.extend_from_slice(&payload[span.end..]);
        }
    }
    Ok(Some(out))
}

/// The relay's filter chain: the built-ins (static dispatch), then the added ones.
pub(crate) struct Chain {
    policy: MethodPolicy,
    cert_request: CertRequest,
    cert_interest: Interest,
    added: Vec<(Interest, Box<dyn RpcFilter>)>,
}

/// What the chain decided, and which filter decided it.
pub(crate) struct Outcome<'f> {
    pub(crate) action: Action,
    pub(crate) by: &'f str,
}

impl Chain {
    pub(crate) fn new(policy: MethodPolicy, cert_request: CertRequest) -> Chain {
        let cert_interest = cert_request.interest();
        Chain {
            policy,
            cert_request,
            cert_interest,
            added: Vec::new(),
        }
    }

    /// Adds `f` after the built-ins; warns when it would never run ([`Chain::never_sees`]).
    pub(crate) fn add(&mut self, f: Box<dyn RpcFilter>) {
        let interest = f.interest();
        if let Some(list) = self.never_sees(&interest) {
            log::warn!(
                target: "gatehouse::cluster",
                "filter {}: every message it asked for ({list}) is denied by cluster.policy, which runs before added filters: it will never see one (allow them in cluster.policy to let the filter decide)",
                f.name()
            );
        }
        self.added.push((interest, f));
    }

    /// When the method policy, which runs first, denies every message `interest` names to
    /// every caller (anonymous and authenticated alike), those messages (`method direction`,
    /// listed): a filter with that interest never runs, and a test of it would pass for the
    /// wrong reason.
    pub(crate) fn never_sees(&self, interest: &Interest) -> Option<String> {
        let wanted = interest.named()?;
        let all_denied = !wanted.is_empty()
            && wanted
                .iter()
                .all(|(dir, m)| self.policy.denies_everyone(*dir, m));
        all_denied.then(|| {
            wanted
                .iter()
                .map(|(d, m)| format!("{m} {}", d.label()))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// Whether any filter may answer at the edge (the relay then also watches for answers).
    pub(crate) fn has_added(&self) -> bool {
        !self.added.is_empty()
    }

    /// Runs the chain on one message. A rewrite is re-enveloped for the filters after it;
    /// the returned action is `Forward`, the last `Rewrite`, or the first other action.
    pub(crate) fn run(&self, link: &LinkInfo<'_>, msg: &Message<'_>) -> Outcome<'_> {
        let dir = msg.direction();
        let mut rewritten: Option<Vec<u8>> = None;
        let mut by = self.policy.name();
        let a = self.policy.on_message(link, msg);
        if a != Action::Forward {
            return Outcome { action: a, by };
        }
        if self.cert_interest.wants(dir, msg.method()) {
            by = self.cert_request.name();
            match self.cert_request.on_message(link, msg) {
                Action::Forward => {}
                Action::Rewrite(p) => rewritten = Some(p),
                a => return Outcome { action: a, by },
            }
        }
        for (interest, f) in &self.added {
            if !interest.wants(dir, msg.method()) {
                continue;
            }
            let action = match &rewritten {
                None => f.on_message(link, msg),
                Some(p) => match envelope::parse(p) {
                    Ok(env) => f.on_message(link, &Message::new(dir, p, &env)),
                    Err(e) => {
                        return Outcome {
                            action: Action::Close(Cow::Owned(format!(
                                "a filter's rewrite is not a valid message: {e}"
                            ))),
                            by,
                        }
                    }
                },
            };
            by = f.name();
            match action {
                Action::Forward => {}
                Action::Rewrite(p) => rewritten = Some(p),
                // The audit and the log say which added filter refused it.
                Action::Deny(why) => {
                    return Outcome {
                        action: Action::Deny(Cow::Owned(format!("filter {by}: {why}"))),
                        by,
                    }
                }
                a => return Outcome { action: a, by },
            }
        }
        Outcome {
            action: rewritten.map_or(Action::Forward, Action::Rewrite),
            by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::codec;
    use bytes::BytesMut;

    fn rewrite(req: &[u8], cert: Option<&X509>) -> Result<Option<Vec<u8>>, &'static str> {
        let env = envelope::parse(req).unwrap();
        with_cert_request(req, &env, cert)
    }

    fn json(p: &[u8]) -> serde_json::Value {
        serde_json::from_slice(p).unwrap()
    }

    #[test]
    fn a_filter_behind_a_policy_that_denies_all_it_wants_is_named() {
        let chain = Chain::new(
            MethodPolicy::new(Policy::new(&crate::config::icinga_policy())),
            CertRequest::new(65536),
        );
        // The built-in policy refuses config::Update from every child: a filter for it
        // upstream never runs.
        let update_up = Interest::methods(["config::Update"]).upstream_only();
        assert_eq!(
            chain.never_sees(&update_up).as_deref(),
            Some("config::Update upstream")
        );
        // Downstream (from the parent) it flows, as do check results, and anything broad.
        for fine in [
            Interest::methods(["config::Update"]),
            Interest::methods(["config::Update"]).downstream_only(),
            Interest::methods(["event::CheckResult"]).upstream_only(),
            Interest::methods(["config::Update", "event::CheckResult"]).upstream_only(),
            Interest::all(),
        ] {
            assert_eq!(chain.never_sees(&fine), None, "{fine:?}");
        }
    }

    #[test]
    fn cert_request_rewrite() {
        let agent = crate::pki::self_signed(&crate::pki::CertSpec::new("agent1")).unwrap();
        let pem = String::from_utf8(agent.cert_pem()).unwrap();
        let cert = Some(&agent.cert);
        let req = br#"{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"ticket":"abc"},"id":"1"}"#;
        let v = json(&rewrite(req, cert).unwrap().unwrap());
        assert_eq!(v["params"]["cert_request"], pem.as_str());
        assert_eq!(v["params"]["ticket"], "abc");
        assert_eq!(v["id"], "1");
        // A client-set cert_request is left alone.
        let own = br#"{"method":"pki::RequestCertificate","params":{"cert_request":"X"}}"#;
        assert_eq!(rewrite(own, cert), Ok(None));
        // null, "" or a non-string count as absent, and the result has one cert_request.
        for unset in [
            &br#"{"method":"pki::RequestCertificate","params":{"cert_request":null,"ticket":"t"}}"#[..],
            br#"{"method":"pki::RequestCertificate","params":{"ticket":"t", "cert_request" : ""}}"#,
            br#"{"method":"pki::RequestCertificate","params":{"cert_\u0072equest":5,"ticket":"t"}}"#,
        ] {
            let out = rewrite(unset, cert).unwrap().unwrap();
            let text = String::from_utf8_lossy(&out);
            assert_eq!(text.matches("cert_").count(), 1, "{text}");
            let v = json(&out);
            assert_eq!(v["params"]["cert_request"], pem.as_str());
            assert_eq!(v["params"]["ticket"], "t");
        }
        // No params, or empty params: added.
        for bare in [
            &br#"{"method":"pki::RequestCertificate"}"#[..],
            br#"{"method":"pki::RequestCertificate","params":{}}"#,
        ] {
            let v = json(&rewrite(bare, cert).unwrap().unwrap());
            assert_eq!(v["params"]["cert_request"], pem.as_str());
        }
        // No client certificate: refused rather than letting the master judge ours.
        assert!(rewrite(req, None).is_err());
        let null = br#"{"method":"pki::RequestCertificate","params":{"cert_request":null}}"#;
        assert!(rewrite(null, None).is_err());
        // params that are not an object cannot carry a certificate.
        let odd = br#"{"method":"pki::RequestCertificate","params":[1]}"#;
        assert!(rewrite(odd, cert).is_err());
        // A framed rewrite decodes back.
        let framed = codec::encode(&rewrite(req, cert).unwrap().unwrap());
        assert!(codec::decode(&mut BytesMut::from(&framed[..]), 1 << 20)
            .unwrap()
            .is_some());
    }

    struct Redact;
    impl RpcFilter for Redact {
        fn name(&self) -> &str {
            "redact"
        }
        fn interest(&self) -> Interest {
            Interest::methods(["event::CheckResult"])
        }
        fn on_message(&self, _: &LinkInfo<'_>, msg: &Message<'_>) -> Action {
            let text = String::from_utf8_lossy(msg.payload()).replace("secret", "******");
            Action::Rewrite(text.into_bytes())
        }
    }

    struct Refuse(&'static str);
    impl RpcFilter for Refuse {
        fn name(&self) -> &str {
            "refuse"
        }
        fn on_message(&self, _: &LinkInfo<'_>, msg: &Message<'_>) -> Action {
            if msg
                .payload()
                .windows(self.0.len())
                .any(|w| w == self.0.as_bytes())
            {
                Action::Deny(Cow::Borrowed("saw it"))
            } else {
                Action::Forward
            }
        }
    }

    /// On a `toward: child` route (a master dialled an agent through Gatehouse) the policy's
    /// directions follow the hierarchy: the master's config::Update flows down to the agent,
    /// the agent still cannot push one up.
    #[test]
    fn policy_directions_follow_the_hierarchy() {
        let ca = crate::pki::Ca::new("t").unwrap();
        let master = crate::identity::ClientCert::from_x509(
            ca.issue(&crate::pki::CertSpec::new("master1"))
                .unwrap()
                .cert,
            true,
        );
        let policy = MethodPolicy::new(Policy::icinga_defaults());
        let update = br#"{"jsonrpc":"2.0","method":"config::Update","params":{}}"#;
        let env = envelope::parse(update).unwrap();
        let link = |toward| LinkInfo {
            listener: "l",
            identity: Identity::Verified(&master),
            client_cert: None,
            sni: "agent1",
            peer: "-",
            toward,
            upstream_cert: None,
        };
        let decide = |toward, dir| {
            matches!(
                policy.on_message(&link(toward), &Message::new(dir, update, &env)),
                Action::Forward
            )
        };
        assert!(
            !decide(Toward::Parent, Direction::Upstream),
            "child → parent: denied"
        );
        assert!(
            decide(Toward::Child, Direction::Upstream),
            "master → agent: allowed"
        );
        assert!(
            !decide(Toward::Child, Direction::Downstream),
            "agent → master: denied"
        );
    }

    /// Renewal through a `toward: child` route: the agent's request comes back along the link
    /// and carries the agent's certificate (as presented upstream), not the master's.
    #[test]
    fn cert_request_follows_the_hierarchy() {
        let master = crate::pki::self_signed(&crate::pki::CertSpec::new("master1")).unwrap();
        let agent = crate::pki::self_signed(&crate::pki::CertSpec::new("agent1")).unwrap();
        let req = br#"{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"ticket":""}}"#;
        let env = envelope::parse(req).unwrap();
        let f = CertRequest::new(64 << 10);
        let link = LinkInfo {
            listener: "l",
            identity: Identity::Anonymous,
            client_cert: Some(&master.cert),
            sni: "agent1",
            peer: "-",
            toward: Toward::Child,
            upstream_cert: Some(&agent.cert),
        };
        let on = |dir| f.on_message(&link, &Message::new(dir, req, &env));
        let Action::Rewrite(p) = on(Direction::Downstream) else {
            panic!("the agent's request must carry its certificate");
        };
        let pem = String::from_utf8(agent.cert.to_pem().unwrap()).unwrap();
        assert_eq!(json(&p)["params"]["cert_request"], pem.as_str());
        assert!(
            matches!(on(Direction::Upstream), Action::Forward),
            "master → agent: untouched"
        );
    }

    #[test]
    fn chain_order_interest_and_rewrites() {
        let mut chain = Chain::new(
            MethodPolicy::new(Policy::icinga_defaults()),
            CertRequest::new(64 << 10),
        );
        chain.add(Box::new(Redact));
        // Sees the rewrite: "******" but never "secret".
        chain.add(Box::new(Refuse("secret")));
        let link = LinkInfo {
            listener: "l",
            identity: Identity::Anonymous,
            client_cert: None,
            sni: "",
            peer: "-",
            toward: Default::default(),
            upstream_cert: None,
        };
        let run = |p: &[u8], dir| {
            let env = envelope::parse(p).unwrap();
            let o = chain.run(&link, &Message::new(dir, p, &env));
            (o.action, o.by.to_string())
        };
        let cr = br#"{"method":"event::CheckResult","params":{"output":"secret"}}"#;
        // Anonymous may not send check results: the built-in policy decides first.
        assert_eq!(
            run(cr, Direction::Upstream),
            (
                Action::Deny("cluster.policy[0]".into()),
                "cluster.policy".into()
            )
        );
        let (a, _) = run(cr, Direction::Downstream);
        assert_eq!(
            a,
            Action::Rewrite(
                br#"{"method":"event::CheckResult","params":{"output":"******"}}"#.to_vec()
            )
        );
        // Not a CheckResult: Redact is not asked, Refuse is.
        let hb = br#"{"method":"event::Heartbeat","params":{"x":"secret"}}"#;
        assert_eq!(
            run(hb, Direction::Downstream),
            (
                Action::Deny("filter refuse: saw it".into()),
                "refuse".into()
            )
        );
        assert!(Interest::methods(["a"])
            .upstream_only()
            .wants(Direction::Upstream, Some("a")));
        assert!(!Interest::methods(["a"])
            .upstream_only()
            .wants(Direction::Downstream, Some("a")));
        assert!(!Interest::methods(["a"]).wants(Direction::Upstream, None));
        assert!(Interest::all().wants(Direction::Upstream, None));
    }
}
