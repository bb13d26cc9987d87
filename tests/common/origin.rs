//! In-process origins ([`Upstream`]): HTTP/1.1 (keep-alive) or HTTP/2, TLS or plain, answering
//! with what they saw (client CN, SNI, ALPN, request) as JSON.

use super::http1::{dechunk, find, find_header, owned_headers, read_more};
use super::pki::cn_of;
use boring::ssl::SslAcceptor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What an origin saw on one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub client_cn: Option<String>,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// How an origin answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with a JSON summary of what it saw.
    Echo,
    /// Accepts (and handshakes) but never answers.
    Hang,
}

/// An in-process origin on 127.0.0.1 port 0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted (to observe pooling).
    pub connections: Arc<Mutex<usize>>,
    /// The TLS acceptor new connections get (h1 origins can swap it mid-test).
    tls: Arc<Mutex<Option<Arc<SslAcceptor>>>>,
    /// Status answered per request path instead of 200 ([`Upstream::answer`]).
    answers: Answers,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Serves new TLS connections with `acc` from now on (a certificate rotation).
    pub fn set_tls(&self, acc: SslAcceptor) {
        *self.tls.lock().unwrap() = Some(Arc::new(acc));
    }

    /// From now on answer requests for `path` (path and query, exactly) with `status`, still
    /// recording them and with the usual JSON body (h1 origins only): a health endpoint that
    /// fails, then recovers.
    pub fn answer(&self, path: &str, status: u16) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_string(), status);
    }

    /// An HTTP/1.1 keep-alive origin; TLS when `tls` is given.
    pub async fn h1(tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::h1_listening(l, tls, behavior)
    }

    /// [`Upstream::h1`] on `addr`, e.g. a [`reserved_port`] a config named before the origin
    /// came up (a peer that comes back).
    pub async fn h1_on(addr: SocketAddr, tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.set_reuseaddr(true).expect("SO_REUSEADDR");
        s.bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let l = s
            .listen(1024)
            .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
        Upstream::h1_listening(l, tls, behavior)
    }

    fn h1_listening(l: TcpListener, tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let tls = Arc::new(Mutex::new(tls.map(Arc::new)));
        let answers = Answers::default();
        let (s2, c2, t2, a2) = (
            seen.clone(),
            connections.clone(),
            tls.clone(),
            answers.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                *c2.lock().unwrap() += 1;
                let (seen, tls) = (s2.clone(), t2.lock().unwrap().clone());
                let answers = a2.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            let Ok(s) = tokio_boring::accept(&acc, tcp).await else {
                                return;
                            };
                            let ssl = s.ssl();
                            let info = ConnInfo::of(ssl);
                            serve_h1(s, info, seen, answers, behavior).await
                        }
                        None => serve_h1(tcp, ConnInfo::default(), seen, answers, behavior).await,
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            tls,
            answers,
            task,
        }
    }

    /// An HTTP/2 origin over TLS (ALPN h2 only).
    pub async fn h2(tls: SslAcceptor) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let tls = Arc::new(tls);
        let (s2, c2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                *c2.lock().unwrap() += 1;
                let (seen, tls) = (s2.clone(), tls.clone());
                tokio::spawn(async move {
                    let Ok(s) = tokio_boring::accept(&tls, tcp).await else {
                        return;
                    };
                    let ssl = s.ssl();
                    let info = ConnInfo::of(ssl);
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    // Each stream in its own task: the connection must keep being polled
                    // (accept) for request bodies to arrive.
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let (seen, info) = (seen.clone(), info.clone());
                        tokio::spawn(async move {
                            let (parts, mut body) = req.into_parts();
                            let mut data = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                data.extend_from_slice(&chunk);
                            }
                            let s = Seen {
                                client_cn: info.client_cn.clone(),
                                sni: info.sni.clone(),
                                alpn: info.alpn.clone(),
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into(),
                                        )
                                    })
                                    .collect(),
                                body: data,
                            };
                            let reply = summary(&s);
                            seen.lock().unwrap().push(s);
                            let resp = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(())
                                .unwrap();
                            if let Ok(mut stream) = respond.send_response(resp, false) {
                                let _ = stream.send_data(reply.into(), true);
                            }
                        });
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            tls: Arc::new(Mutex::new(None)),
            answers: Answers::default(),
            task,
        }
    }
}

#[derive(Default, Clone)]
struct ConnInfo {
    client_cn: Option<String>,
    sni: Option<String>,
    alpn: Option<String>,
}

impl ConnInfo {
    fn of(ssl: &boring::ssl::SslRef) -> ConnInfo {
        ConnInfo {
            client_cn: ssl.peer_certificate().and_then(|c| cn_of(&c)),
            sni: ssl
                .servername(boring::ssl::NameType::HOST_NAME)
                .map(str::to_string),
            alpn: ssl
                .selected_alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

fn summary(s: &Seen) -> Vec<u8> {
    serde_json::json!({
        "client_cn": s.client_cn, "sni": s.sni, "alpn": s.alpn,
        "method": s.method, "path": s.path,
        "body_len": s.body.len(),
    })
    .to_string()
    .into_bytes()
}

/// Status per request path an h1 origin answers instead of 200.
type Answers = Arc<Mutex<HashMap<String, u16>>>;

async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    info: ConnInfo,
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Answers,
    behavior: Behavior,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_request_head(&mut s, &mut buf).await else {
            return;
        };
        if behavior == Behavior::Hang {
            // Holds the request unanswered: the hung origin under test.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        let Some(body) = read_request_body(&mut s, &mut buf, &head).await else {
            return;
        };
        let seen_req = Seen {
            client_cn: info.client_cn.clone(),
            sni: info.sni.clone(),
            alpn: info.alpn.clone(),
            method: head.method,
            path: head.path,
            headers: head.headers,
            body,
        };
        let status = answers
            .lock()
            .unwrap()
            .get(&seen_req.path)
            .copied()
            .unwrap_or(200);
        let reply = summary(&seen_req);
        seen.lock().unwrap().push(seen_req);
        if !write_json_answer(&mut s, status, &reply).await {
            return;
        }
    }
}

/// A request head an h1 origin read: its length in the buffer, method, path and headers.
struct RequestHead {
    len: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// Reads until `buf` holds a complete request head; `None` once the client went away.
async fn read_request_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<RequestHead> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            return Some(RequestHead {
                len,
                method: req.method.unwrap_or("").to_string(),
                path: req.path.unwrap_or("").to_string(),
                headers: owned_headers(req.headers),
            });
        }
        if !read_more(s, buf).await {
            return None;
        }
    }
}

/// Reads the body that follows `head` (chunked or `Content-Length`), drains the request from
/// `buf` and returns the body; `None` once the client went away.
async fn read_request_body<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head: &RequestHead,
) -> Option<Vec<u8>> {
    let head_len = head.len;
    let chunked = head.headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let (body, consumed) = if chunked {
        // A chunked body ends in a zero chunk.
        loop {
            if let Some(end) = find(&buf[head_len..], b"0\r\n\r\n") {
                let raw = &buf[head_len..head_len + end + 5];
                break (dechunk(raw).unwrap_or_default(), head_len + end + 5);
            }
            if !read_more(s, buf).await {
                return None;
            }
        }
    } else {
        let len: usize = find_header(&head.headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + len {
            if !read_more(s, buf).await {
                return None;
            }
        }
        (buf[head_len..head_len + len].to_vec(), head_len + len)
    };
    buf.drain(..consumed);
    Some(body)
}

/// Writes a `status` answer with a JSON `reply`; false once the client went away.
async fn write_json_answer<S: AsyncWrite + Unpin>(s: &mut S, status: u16, reply: &[u8]) -> bool {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("Other");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reply.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(reply).await.is_err() {
        return false;
    }
    let _ = s.flush().await;
    true
}
