//! Outbound HTTP: every request a guest sends through `wasi:http/outgoing-handler` is checked
//! against the component's `http` grants, then sent by capgate to an address the SSRF guard
//! vetted.
//!
//! The guard resolves the name itself and connects to the address it checked, keeping the
//! `Host` header and TLS server name of the URL, so a name that resolves to an internal address
//! (loopback, private, link-local, unique-local, metadata) is refused even if its DNS answer
//! changes between two lookups. A grant reaches internal addresses only when it names one
//! itself: an IP literal or CIDR range containing it, or `localhost` for loopback.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::body::Capped;
use crate::authz::Request;
use crate::gate::{Gate, Sensitive};
use crate::policy::pattern::{HostPattern, HttpScheme, canonical_ip, is_internal};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `wasi:http` hooks of one component's store.
pub(crate) struct HttpGuard {
    pub(crate) gate: Gate,
    /// Outbound connections open now, each holding a host descriptor.
    pub(crate) connections: Arc<std::sync::atomic::AtomicUsize>,
    /// How many may be open at once: `limits.sockets`.
    pub(crate) max_connections: usize,
}

/// One outbound connection's place in its store's count, given back when the connection ends.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    /// A place, if fewer than `max` are taken.
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering::SeqCst;
        count
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for HttpGuard {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let gate = self.gate.clone();
        let slot = Slot::take(&self.connections, self.max_connections);
        Box::new(async move {
            // `limits.sockets` bounds outbound HTTP connections as it bounds sockets: past
            // it, the request fails with `connection-limit-reached`.
            let Some(slot) = slot else {
                return Err(Error::ConnectionLimitReached);
            };
            guarded_send(gate, request, options, slot).await
        })
    }
}

async fn guarded_send(
    gate: Gate,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    slot: Slot,
) -> SendResult {
    // Shared by the connection and by the name lookup, which runs on a host thread until the
    // resolver answers even if the guest abandons the request: the place is given back only
    // when both have ended.
    let slot = Arc::new(slot);
    let uri = request.uri().clone();
    let scheme = match uri.scheme_str() {
        Some("https") => HttpScheme::Https,
        Some("http") => HttpScheme::Http,
        _ => return Err(Error::HttpProtocolError),
    };
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    let canonical = canonical_host(authority.host());
    let req = Request::Http {
        method: request.method().as_str().to_owned(),
        scheme,
        host: canonical
            .clone()
            .unwrap_or_else(|| authority.host().to_ascii_lowercase()),
        port,
        path: uri.path().to_owned(),
    };
    // Refuse what could make the decided request differ from the one a server sees: userinfo
    // (`user@host`), hosts only resolvers read as numbers, and paths that are not in normal
    // form (servers resolve dot segments and decode `%2f`, which could leave a granted prefix).
    let malformed = if authority.as_str().contains('@') {
        Some("the URL has userinfo (`user@host`)")
    } else if canonical.is_none() {
        Some("the host is not a DNS name or an IP address in standard form")
    } else {
        let spec = &gate.policy().policy().components[gate.component()];
        let named = spec.http.iter().any(|g| g.url.path().contains("//"));
        abnormal_path(uri.path(), named)
    };
    let query = uri.query().map(|q| q.as_bytes().to_vec());
    let sensitive = || -> Sensitive { query.iter().map(|q| ("query", q.clone())).collect() };
    if let Some(why) = malformed {
        gate.refuse(&req, why, sensitive);
        return Err(Error::HttpRequestUriInvalid);
    }
    let bare_host = canonical.unwrap_or_default();
    // Recorded before the name is resolved: a request the log cannot take (fail-closed) sends
    // no DNS query either.
    let decision = gate.decide_with(&req, sensitive).await;
    if !decision.allowed {
        return Err(Error::HttpRequestDenied);
    }

    // The SSRF guard: resolve, then keep only addresses the allowing grants may reach.
    let spec = &gate.policy().policy().components[gate.component()];
    let grants: Vec<&HostPattern> = spec
        .http
        .iter()
        .filter(|g| decision.reasons.iter().any(|r| r == g.id.as_str()))
        .map(|g| g.url.host())
        .collect();
    let candidates: Vec<SocketAddr> = match bare_host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let held = slot.clone();
            let name = bare_host.clone();
            // Not aborted with this request: it keeps its place until the resolver answers.
            let lookup = tokio::spawn(async move {
                let found = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map(Iterator::collect::<Vec<_>>);
                drop(held);
                found
            });
            match lookup.await {
                Ok(Ok(addrs)) => addrs,
                _ => return Err(Error::DestinationNotFound),
            }
        }
    };
    let vetted: Vec<SocketAddr> = candidates
        .iter()
        .copied()
        .filter(|a| {
            !is_internal(a.ip()) || grants.iter().any(|g| names_internal(g, &bare_host, a.ip()))
        })
        .collect();
    let Some(&addr) = vetted.first() else {
        let why = format!(
            "SSRF guard: `{bare_host}` resolves only to internal addresses ({}) and no grant names them",
            candidates
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A second decision on the same request, the guard's own, recorded as such.
        gate.refuse(&req, &why, sensitive);
        return Err(Error::DestinationIpProhibited);
    };

    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(CONNECT_TIMEOUT);
    let stream =
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(s) => s.map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                _ => Error::Connect(e),
            })?,
            Err(_) => return Err(Error::ConnectionTimeout),
        };
    // Origin-form request target; the `Host` header already names the URL's authority.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let limit = spec.limits.body.bytes();
    let request = request.map(|b| Capped::request(b, limit).boxed_unsync());
    let (response, worker) = match scheme {
        HttpScheme::Http => exchange(stream, request, slot).await?,
        HttpScheme::Https => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = match bare_host.parse::<IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::from(ip),
                Err(_) => rustls::pki_types::ServerName::try_from(bare_host.clone())
                    .map_err(Error::InvalidDnsNameError)?,
            };
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, stream)
                .await
                .map_err(Error::Tls)?;
            exchange(tls, request, slot).await?
        }
    };
    Ok((
        response.map(|b| Capped::response(b, limit).boxed_unsync()),
        worker,
    ))
}

/// The host as decisions see it: lowercase, no trailing dot, an IP in its canonical form.
/// Hosts that only resolvers read as numbers (`2130706433`, `0x7f.1`) are refused.
fn canonical_host(host: &str) -> Option<String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(canonical_ip(ip).to_string());
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    let numeric = |l: &str| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x");
    if name.is_empty()
        || name.split('.').all(numeric)
        || name.rsplit('.').next().is_some_and(numeric)
    {
        return None;
    }
    Some(name)
}

/// Why `path` is not in a form every server reads the same way, if it is not: dot segments
/// (plain or percent-encoded), encoded `/` or `\`, backslashes, `;` path parameters (which
/// some servers strip: `/v1/..;/admin`), double encoding (`%25`), percent-escapes that do not
/// decode to UTF-8 (overlong forms such as `%c0%ae`), and empty segments (`//`), unless a grant
/// of the component names a path with one itself.
fn abnormal_path(path: &str, grants_name_empty_segments: bool) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains('\\')
        || lower.contains("%2e")
    {
        return Some(
            "the path is not in normal form (`.`/`..` segments, or encoded `.`, `/` or `\\`)",
        );
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some(
            "the path is not in normal form (`.`/`..` segments, or encoded `.`, `/` or `\\`)",
        );
    }
    if path.contains(';') {
        return Some("the path has `;` parameters, which servers read differently");
    }
    if lower.contains("%25") {
        return Some("the path is percent-encoded twice (`%25`)");
    }
    if !percent_decodes_to_utf8(path) {
        return Some(
            "the path's percent-escapes do not decode to UTF-8 (overlong or invalid forms)",
        );
    }
    if path.contains("//") && !grants_name_empty_segments {
        return Some("the path has an empty segment (`//`), which servers read differently");
    }
    None
}

/// Whether the bytes `path`'s percent-escapes stand for, with its other characters, are
/// valid UTF-8.
fn percent_decodes_to_utf8(path: &str) -> bool {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => return false,
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// May a grant with host pattern `g` reach internal address `ip` for a request to `host`?
fn names_internal(g: &HostPattern, host: &str, ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    match g {
        HostPattern::Ip(_) | HostPattern::Cidr(_) => g.matches_ip(ip),
        HostPattern::Name(n) => {
            n == "localhost" && host.eq_ignore_ascii_case("localhost") && ip.is_loopback()
        }
        HostPattern::Any | HostPattern::Subdomain(_) => false,
    }
}

/// Sends `request` on `stream`; the connection keeps `slot` until it ends.
async fn exchange<S>(stream: S, request: http::Request<WasiBody>, slot: Arc<Slot>) -> SendResult
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
            .await
            .map_err(Error::from)?;
    let driver = tokio::spawn(async move {
        let _slot = slot;
        conn.await
    });
    // A request body that failed (past `limits.body`) reports its own error, not hyper's.
    let response =
        sender.send_request(request).await.map_err(|e| {
            match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Error>()) {
                Some(Error::HttpRequestBodySize(n)) => Error::HttpRequestBodySize(*n),
                _ => Error::from(e),
            }
        })?;
    let worker = async move {
        match driver.await {
            Ok(r) => r.map_err(Error::from),
            Err(e) => Err(Error::InternalError(Some(e.to_string()))),
        }
    };
    Ok((
        response.map(|b| b.map_err(Error::from).boxed_unsync()),
        Box::new(worker) as Box<dyn Future<Output = Result<(), Error>> + Send>,
    ))
}
