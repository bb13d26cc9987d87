//! Clients: TLS connections as the tests' clients make them ([`ClientOpts`]), one-shot
//! HTTP/1.1 requests over raw bytes ([`request`]), curl with its defaults ([`curl`]), the
//! metrics endpoint, and netstring frames read off a cluster link.

use super::http1::{parse_response, Response};
use super::pki::Pki;
use boring::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options for a test client connection.
#[derive(Clone, Default)]
pub struct ClientOpts {
    /// CA file that verifies the server.
    pub ca: Option<PathBuf>,
    /// Client certificate and key files.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// SNI (default: none, as for an IP).
    pub sni: Option<String>,
    /// Force TLS 1.2 (so a refused client cert fails in the handshake itself).
    pub tls12: bool,
}

/// Connects with TLS to `addr`.
pub async fn tls_connect(
    addr: SocketAddr,
    o: &ClientOpts,
) -> Result<tokio_boring::SslStream<TcpStream>, String> {
    tls_handshake(tcp_connect(None, addr).await?, o).await
}

/// The client side of a TLS handshake over `tcp`, as `o` says.
async fn tls_handshake(
    tcp: TcpStream,
    o: &ClientOpts,
) -> Result<tokio_boring::SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    match &o.ca {
        Some(ca) => b.set_ca_file(ca).unwrap(),
        None => b.set_verify(SslVerifyMode::NONE),
    }
    if let Some((c, k)) = &o.cert {
        b.set_certificate_chain_file(c).unwrap();
        b.set_private_key_file(k, SslFiletype::PEM).unwrap();
    }
    if o.tls12 {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    }
    let connector = b.build();
    let mut cfg = connector.configure().unwrap();
    let name = o.sni.clone().unwrap_or_default();
    if o.sni.is_none() {
        cfg.set_use_server_name_indication(false);
        cfg.set_verify_hostname(false);
    }
    tokio_boring::connect(cfg, &name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// A TCP connection to `addr`, from `src` when given (any of 127.0.0.0/8 reaches a loopback
/// listener, so a test can be many clients by their IP).
async fn tcp_connect(src: Option<IpAddr>, addr: SocketAddr) -> Result<TcpStream, String> {
    let Some(src) = src else {
        return TcpStream::connect(addr).await.map_err(|e| e.to_string());
    };
    let s = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    s.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect(addr).await.map_err(|e| e.to_string())
}

/// One HTTP/1.1 request with `Connection: close` over TLS (or plain when `tls` is None).
pub async fn request(
    addr: SocketAddr,
    tls: Option<&ClientOpts>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    request_from(None, addr, tls, method, path, headers, body).await
}

/// [`request`] from the source address `src` (e.g. `127.0.0.7`: another client IP).
pub async fn request_from(
    src: Option<IpAddr>,
    addr: SocketAddr,
    tls: Option<&ClientOpts>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    tokio::time::timeout(Duration::from_secs(20), async {
        let tcp = tcp_connect(src, addr).await?;
        match tls {
            Some(o) => {
                let s = tls_handshake(tcp, o).await?;
                exchange(s, &bytes).await
            }
            None => exchange(tcp, &bytes).await,
        }
    })
    .await
    .map_err(|_| "request timed out".to_string())?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> Result<Response, String> {
    // A server may answer early (e.g. 413) and close while we are still sending: like curl,
    // keep the write error but still read whatever answer arrived.
    let sent = async {
        s.write_all(req).await?;
        s.flush().await
    }
    .await;
    let mut buf = Vec::new();
    // A peer may close without close_notify after a full response: keep what arrived.
    if let Err(e) = s.read_to_end(&mut buf).await {
        if buf.is_empty() {
            return Err(match sent {
                Err(w) => format!("write: {w}"),
                Ok(()) => format!("read: {e}"),
            });
        }
    }
    match (parse_response(&buf), sent) {
        (Ok(r), _) => Ok(r),
        (Err(_), Err(w)) => Err(format!("write: {w}")),
        (Err(e), Ok(())) => Err(e),
    }
}

/// Whether the server closed the connection within `t` (anything it sends first is skipped).
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, t: Duration) -> bool {
    let mut b = [0u8; 512];
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// What curl saw: status code, HTTP version (`2`, `1.1`) and body.
#[derive(Debug)]
pub struct CurlOut {
    pub status: String,
    pub version: String,
    pub body: String,
}

/// curl with its defaults (HTTP/2 over TLS), as `who` of `pki` (its `who.crt`/`who.key`),
/// trusting `pki`'s CA, plus `args`; bounded by 15 s.
pub async fn curl(pki: &Pki, who: &str, url: &str, args: &[&str]) -> CurlOut {
    let (cert, key) = pki.paths(who);
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(args)
            .arg("--cacert")
            .arg(pki.ca_path())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(url)
            .output(),
    )
    .await
    .expect("curl finished")
    .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    CurlOut {
        status: status.to_string(),
        version: version.to_string(),
        body: body.to_string(),
    }
}

/// The text of Gatehouse's `/metrics` on plain `127.0.0.1:port`.
pub async fn metrics_text(port: u16) -> String {
    request(
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .await
    .expect("metrics endpoint answers")
    .text()
}

/// Sum of every series of `name` whose labels include all of `labels` (0 if none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |a, b| a + b)
}

/// Reads netstrings from `s` until `n` frames arrived, the stream ends, or `t` passes.
/// Returns the frames as received (`len:payload,`) and whether the stream ended.
pub async fn read_frames<S: AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
    t: Duration,
) -> (Vec<Vec<u8>>, bool) {
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + t;
    loop {
        while let Ok(Some(f)) = gatehouse::cluster::codec::decode(&mut buf, 64 << 20) {
            out.push(f.raw().to_vec());
        }
        if out.len() >= n {
            return (out, false);
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(_)) => {}
            Err(_) => return (out, false),
        }
    }
}

/// The payload of one complete netstring (`len:payload,`).
pub fn frame_payload(raw: &[u8]) -> Vec<u8> {
    let mut b = bytes::BytesMut::from(raw);
    gatehouse::cluster::codec::decode(&mut b, 64 << 20)
        .expect("a valid frame")
        .expect("a complete frame")
        .payload()
        .to_vec()
}
