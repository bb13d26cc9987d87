//! What an upstream request carries besides the client's own headers: who the client is
//! (`X-Forwarded-For`, `-Proto`, `X-Forwarded-Client-Cert`), which credentials (the caller's
//! basic credentials never; the group's own), and the added filters' edits; and the filters'
//! edits of the response header on its way back.

use super::ctx::RequestCtx;
use super::filter::{Chain, Phases};
use super::route::Route;
use crate::identity::ClientCert;
use crate::upstream::UpstreamGroup;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// The headers every upstream request gets: `X-Forwarded-For`/`-Proto` (overwritten: the
/// edge is where the client is known; `https` is whether the listener terminates TLS) and, if
/// the route asks, `X-Forwarded-Client-Cert`. Any incoming `X-Forwarded-Client-Cert`, in any
/// spelling, is removed on every route.
pub(super) fn forwarding_headers(
    https: bool,
    session: &Session,
    route: &Route,
    client: Option<&ClientCert>,
    req: &mut RequestHeader,
) -> Result<()> {
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        req.insert_header("x-forwarded-for", ip.to_string())?;
    }
    req.insert_header("x-forwarded-proto", if https { "https" } else { "http" })?;
    let spellings: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| is_xfcc_spelling(n.as_str()))
        .cloned()
        .collect();
    for name in spellings {
        req.remove_header(&name);
    }
    if let (true, Some(c)) = (route.forward_xfcc, client) {
        if req
            .insert_header("x-forwarded-client-cert", xfcc(c))
            .is_err()
        {
            log::warn!(target: "gatehouse::access", "route {}: client certificate fields cannot form a header; X-Forwarded-Client-Cert not sent", route.name);
        }
    }
    Ok(())
}

/// The `Authorization` an upstream request carries: the caller's basic credentials and bearer
/// tokens are the edge's to check; a token goes on only if the route says (`bearer.forward`)
/// and it verified (`token_verified`: a certificate caller on a `token_or_cert` route sends
/// nothing on); a group with its own (`upstreams.<name>.basic_auth`) gets those instead. Other
/// routes pass the header as sent (Icinga's REST API takes the caller's credentials itself).
pub(super) fn upstream_credentials(
    route: &Route,
    group: &UpstreamGroup,
    token_verified: bool,
    req: &mut RequestHeader,
) -> Result<()> {
    let keeps_token = token_verified && route.bearer.as_ref().is_some_and(|b| b.forward);
    if route.basic_auth.is_some() || (route.bearer.is_some() && !keeps_token) {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    if let Some(a) = group.authorization() {
        req.insert_header(http::header::AUTHORIZATION, a)?;
    }
    Ok(())
}

/// Applies the filters' `upstream_request` phase (a refusal fails the request with 500).
pub(super) fn filter_upstream(
    filters: &Chain,
    listener: &str,
    session: &Session,
    ctx: &RequestCtx,
    req: &mut RequestHeader,
) -> Result<()> {
    if !filters.runs(Phases::UPSTREAM_REQUEST) {
        return Ok(());
    }
    let Some(view) = ctx.view(session, listener) else {
        return Ok(());
    };
    filters
        .upstream_request(&view, req)
        .or_else(|e| Error::e_explain(ErrorType::InternalError, e))
}

/// Applies the filters' `response` phase.
pub(super) fn filter_response(
    filters: &Chain,
    listener: &str,
    session: &Session,
    ctx: &RequestCtx,
    resp: &mut ResponseHeader,
) {
    if !filters.runs(Phases::RESPONSE) {
        return;
    }
    if let Some(view) = ctx.view(session, listener) {
        filters.response(&view, resp);
    }
}

/// Envoy's `X-Forwarded-Client-Cert` element for `c`:
/// `Hash=<sha256>;Subject="<DN>";URI=<uri>;DNS=<name>` (URI and DNS repeated per SAN).
///
/// The Subject is RFC 4514-escaped ([`ClientCert::subject`]) and always quoted; URI and DNS
/// values are quoted when they hold a separator. Inside quotes `"` and `\` are
/// backslash-escaped and control characters written as `\xHH`, so no field can end early,
/// add an element, or break the header.
pub fn xfcc(c: &ClientCert) -> String {
    fn quoted(v: &str) -> String {
        let mut out = String::with_capacity(v.len() + 2);
        out.push('"');
        for ch in v.chars() {
            match ch {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(ch);
                }
                ch if ch.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in ch.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                ch => out.push(ch),
            }
        }
        out.push('"');
        out
    }
    fn value(v: &str) -> String {
        if v.contains([',', ';', '=', '"', '\\', ' ']) || v.chars().any(char::is_control) {
            quoted(v)
        } else {
            v.to_string()
        }
    }
    let mut parts = vec![
        format!("Hash={}", c.fingerprint),
        format!("Subject={}", quoted(&c.subject)),
    ];
    parts.extend(c.uris.iter().map(|u| format!("URI={}", value(u))));
    parts.extend(c.dns.iter().map(|d| format!("DNS={}", value(d))));
    parts.join(";")
}

/// Whether a request header name is a spelling of `X-Forwarded-Client-Cert` that a backend
/// might fold into it (any case, `_` for `-`: nginx, CGI and some frameworks treat them alike).
fn is_xfcc_spelling(name: &str) -> bool {
    const XFCC: &[u8] = b"x-forwarded-client-cert";
    name.len() == XFCC.len()
        && name.bytes().zip(XFCC).all(|(a, &b)| {
            let a = a.to_ascii_lowercase();
            a == b || (a == b'_' && b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};

    #[test]
    fn xfcc_fields_cannot_break_out() {
        let ca = Ca::new("t").unwrap();
        let leaf = ca
            .issue(
                &CertSpec::new(r#"a,b;c="d"\e"#)
                    .dns(&["x.example.org"])
                    .uris(&["spiffe://example.org/a;b"]),
            )
            .unwrap();
        let c = ClientCert::from_x509(leaf.cert, true);
        let h = xfcc(&c);
        assert!(
            h.contains(r#";Subject="CN=a\\,b\\;c=\\\"d\\\"\\\\e";"#),
            "{h}"
        );
        assert!(h.contains(r#";URI="spiffe://example.org/a;b";"#), "{h}");
        assert!(h.ends_with(";DNS=x.example.org"), "{h}");
        assert!(http::HeaderValue::from_str(&h).is_ok());
    }

    #[test]
    fn every_xfcc_spelling_is_recognised() {
        for n in [
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "x_forwarded-client_cert",
            "X-Forwarded-Client-Cert",
        ] {
            assert!(is_xfcc_spelling(n), "{n}");
        }
        for n in [
            "x-forwarded-client-certs",
            "x-forwarded-for",
            "xforwardedclientcert",
        ] {
            assert!(!is_xfcc_spelling(n), "{n}");
        }
    }
}
