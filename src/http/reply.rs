//! Answers Gatehouse writes itself (refusals, 401, edge answers, failure answers): Kea-shaped
//! JSON for JSON clients, text otherwise, and never before what is left of a small request
//! body was read.

use super::filter::EdgeAnswer;
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Whether the client sent JSON (and so reads a Kea-shaped error).
pub(super) fn wants_json(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Most of an unread request body read (and dropped) before an answer sent ahead of it: a
/// refused client spends its own bandwidth, nothing is kept.
const SETTLE_MAX: usize = 16 * 1024 * 1024;
/// How long reading it may take.
const SETTLE_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops what is left of the request body, up to [`SETTLE_MAX`] within
/// [`SETTLE_TIME`], before an answer sent without it (a refusal, a 401, a 413, an edge answer),
/// as nginx discards it. Answering while the client still sends fails it: curl (7.88, Debian
/// 12) reports an HTTP/2 stream closed mid-upload as `(92) Stream error in the HTTP/2 framing
/// layer` even after a complete answer and `RST_STREAM(NO_ERROR)`, and an HTTP/1.1 connection
/// closed with unread bytes is reset under the client before it reads the answer (measured:
/// 200 of 200 and 15 of 200 failed with a 200 KiB body when only 64 KiB were read). Larger or
/// slower bodies are not waited for.
async fn settle_body(session: &mut Session) {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && !session.is_body_done() {
        // The client waits for our go-ahead before it sends: answering now is what it expects.
        return;
    }
    let settle = async {
        let mut read = 0usize;
        while read <= SETTLE_MAX {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(SETTLE_TIME, settle).await;
}

/// Writes a filter's answer.
pub(super) async fn answer(session: &mut Session, a: EdgeAnswer) -> Result<()> {
    settle_body(session).await;
    let mut resp = ResponseHeader::build(a.status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, a.content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, a.body.len().to_string())?;
    for (name, value) in a.headers {
        resp.insert_header(name, value)?;
    }
    session
        .as_downstream_mut()
        .write_error_response(resp, a.body)
        .await
}

/// `{"result": status, "text": …}` for JSON clients, the text otherwise.
fn body_for(session: &Session, status: u16, text: &str) -> (Bytes, &'static str) {
    if wants_json(session) {
        let v = serde_json::json!({ "result": status, "text": text });
        (Bytes::from(v.to_string()), "application/json")
    } else {
        (
            Bytes::from(format!("{text}\n")),
            "text/plain; charset=utf-8",
        )
    }
}

/// `401` with `WWW-Authenticate`, Kea-shaped as the agent answered
/// (`{"result": 401, "text": "Unauthorized"}`) for JSON clients.
pub(super) async fn unauthorized(session: &mut Session, text: &str, challenge: &str) -> Result<()> {
    with_challenge(session, 401, text, challenge).await
}

/// An answer of `status` with a `WWW-Authenticate` challenge (RFC 6750 §3: a 400 or 403 can
/// carry one too).
pub(super) async fn with_challenge(
    session: &mut Session,
    status: u16,
    text: &str,
    challenge: &str,
) -> Result<()> {
    settle_body(session).await;
    let (body, ctype) = body_for(session, status, text);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, ctype)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::WWW_AUTHENTICATE, challenge)?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
}

/// Answers with a short body; Kea-shaped JSON (`{"result": code, "text": ...}`) when the
/// client speaks JSON, so kea-shell and scripts can parse Gatehouse's own errors.
pub(super) async fn respond(session: &mut Session, status: u16, text: &str) -> Result<()> {
    settle_body(session).await;
    let (body, ctype) = body_for(session, status, text);
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, ctype)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
}
