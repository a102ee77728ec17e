//! Audit records exported as OpenTelemetry log records over OTLP/HTTP (protobuf).
//!
//! The exporter mirrors a [`super::JsonlSink`]: every line the sink writes (start records,
//! decisions, gaps, policy events, signed checkpoints) is handed over once it is in the local
//! file, which stays the source of truth. The log record's body is the line itself, byte for
//! byte, so a receiver can check the chain (each `prev` is the SHA-256 of the line before) and
//! the checkpoint signatures exactly as `capgate audit verify` does; `seq`, `prev`, `type` and,
//! for decisions, `component`, `action`, `resource` and `decision` are attributes too.
//!
//! Handing a line over never blocks enforcement: lines wait in a bounded buffer
//! ([`OtlpOptions::buffer`] lines), and a line that finds it full is dropped from the export
//! (never from the local log) and counted. One thread sends batches in order; a batch that
//! fails is sent again, with backoff, until it goes through, so records arrive in `seq` order
//! (a batch whose answer was lost may arrive twice: receivers keep the first of each `seq`).
//! Failed attempts are counted. On [`OtlpExporter::finish`], what is buffered is sent for up
//! to a deadline; what is left is counted as dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::InstrumentationScope;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLoggerProvider};

use super::file::LineMirror;

/// Lines sent in one export request at most.
const MAX_BATCH: usize = 512;
/// The longest wait between two attempts of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of an [`OtlpExporter`].
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// The OTLP/HTTP logs endpoint, e.g. `http://127.0.0.1:4318/v1/logs` (used as given).
    pub endpoint: String,
    /// Lines buffered for export at most; past it, lines are dropped from the export.
    pub buffer: usize,
    /// The timeout of one export request.
    pub timeout: Duration,
    /// For an `https://` endpoint: certificates (PEM) to trust besides the Web PKI roots,
    /// e.g. a private CA of the collector.
    pub ca_file: Option<std::path::PathBuf>,
}

impl OtlpOptions {
    /// `endpoint` with a buffer of 65536 lines and a 5-second request timeout.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            buffer: 65_536,
            timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

/// What the exporter did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtlpStats {
    /// Lines the receiver acknowledged.
    pub exported: u64,
    /// Lines dropped from the export (buffer full, or still unsent at the end). They are in
    /// the local log.
    pub dropped: u64,
    /// Export requests that failed (each is retried).
    pub failed_attempts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export audit records to `{endpoint}`: {message}")]
pub struct OtlpError {
    endpoint: String,
    message: String,
}

/// Exports the lines of an audit log over OTLP/HTTP (see the module documentation).
#[derive(Debug)]
pub struct OtlpExporter {
    tx: Mutex<Option<tokio::sync::mpsc::Sender<String>>>,
    counters: Arc<Counters>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    endpoint: String,
    /// Once set, the worker gives up retrying at this instant.
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl OtlpExporter {
    /// Starts the exporter's thread. Nothing is sent until lines arrive.
    pub fn start(options: OtlpOptions) -> Result<Self, OtlpError> {
        let fail = |message: String| OtlpError {
            endpoint: options.endpoint.clone(),
            message,
        };
        crate::policy::otlp_endpoint(&options.endpoint).map_err(|m| fail(m.to_owned()))?;
        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_endpoint(options.endpoint.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(options.timeout)
            // One export call is one attempt: retries are this module's, counted.
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .with_http_client(client::Http1 {
                timeout: options.timeout,
                tls: client::tls(options.ca_file.as_deref()).map_err(fail)?,
            })
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(options.buffer.max(1));
        let counters = Arc::new(Counters::default());
        let deadline = Arc::new(Mutex::new(None));
        let (c, d) = (counters.clone(), deadline.clone());
        let worker = std::thread::Builder::new()
            .name("capgate-otlp".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(send_all(exporter, rx, c, d));
            })
            .map_err(|e| fail(format!("cannot start its thread: {e}")))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            counters,
            worker: Mutex::new(Some(worker)),
            endpoint: options.endpoint,
            deadline,
        })
    }

    /// The endpoint records go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What was exported, dropped and retried so far.
    pub fn stats(&self) -> OtlpStats {
        OtlpStats {
            exported: self.counters.exported.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed_attempts: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops taking lines, sends what is buffered for up to `grace`, and returns the
    /// final counts. Later calls return the counts again.
    pub fn finish(&self, grace: Duration) -> OtlpStats {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + grace);
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(w) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
        self.stats()
    }
}

impl LineMirror for OtlpExporter {
    fn lines(&self, lines: &[u8]) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = String::from_utf8_lossy(line).into_owned();
            let sent = tx.as_ref().is_some_and(|tx| tx.try_send(line).is_ok());
            if !sent {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        self.finish(Duration::ZERO);
    }
}

/// The exporter's loop: batches in arrival order, each retried until it is acknowledged or
/// the deadline set by `finish` passes.
async fn send_all(
    exporter: opentelemetry_otlp::LogExporter,
    mut rx: tokio::sync::mpsc::Receiver<String>,
    counters: Arc<Counters>,
    deadline: Arc<Mutex<Option<Instant>>>,
) {
    let scope = InstrumentationScope::builder("capgate.audit")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let blank = SdkLoggerProvider::builder()
        .build()
        .logger("capgate.audit")
        .create_log_record();
    let deadline_at = || *deadline.lock().unwrap_or_else(|e| e.into_inner());
    let past_deadline = || deadline_at().is_some_and(|d| Instant::now() >= d);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(line) = rx.recv().await {
        batch.push(record(&blank, &line));
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(line) => batch.push(record(&blank, &line)),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let refs: Vec<_> = batch.iter().map(|r| (r, &scope)).collect();
            // Once `finish` set a deadline, no attempt outlives it.
            let result = match deadline_at() {
                Some(d) => tokio::time::timeout_at(d.into(), exporter.export(LogBatch::new(&refs)))
                    .await
                    .unwrap_or(Err(opentelemetry_sdk::error::OTelSdkError::Timeout(
                        Duration::ZERO,
                    ))),
                None => exporter.export(LogBatch::new(&refs)).await,
            };
            drop(refs);
            let error = match result {
                Ok(()) => {
                    counters
                        .exported
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    break;
                }
                Err(e) => e.to_string(),
            };
            counters.failed.fetch_add(1, Ordering::Relaxed);
            // A collector that refuses the request itself (400, 413, ...) refuses it again:
            // the batch is dropped (counted), so it does not hold up every line behind it.
            if permanent(&error) || past_deadline() {
                counters
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                break;
            }
            let pause = match deadline_at() {
                Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                None => backoff,
            };
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if past_deadline() {
            // What is still buffered will not be sent in time: count it.
            rx.close();
            while rx.recv().await.is_some() {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether an export error is a refusal no retry changes: a 4xx status other than 408
/// (timeout) and 429 (too many requests).
fn permanent(error: &str) -> bool {
    error
        .split("status code: ")
        .nth(1)
        .and_then(|s| s.get(..3)?.parse::<u16>().ok())
        .is_some_and(|code| (400..500).contains(&code) && code != 408 && code != 429)
}

/// The log record for one line: the line as its body, the chain fields as attributes.
fn record(blank: &SdkLogRecord, line: &str) -> SdkLogRecord {
    let mut r = blank.clone();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let ts = v["ts"]
        .as_str()
        .and_then(|t| super::parse_ts(t).ok())
        .map_or_else(SystemTime::now, SystemTime::from);
    r.set_event_name("capgate.audit");
    r.set_timestamp(ts);
    r.set_observed_timestamp(SystemTime::now());
    let kind = v["type"].as_str().unwrap_or("decision").to_owned();
    let denied = v["decision"] == "deny";
    r.set_severity_number(if denied || kind == "gap" {
        Severity::Warn
    } else {
        Severity::Info
    });
    r.set_body(AnyValue::from(line.to_owned()));
    r.add_attribute("capgate.seq", v["seq"].as_i64().unwrap_or(-1));
    r.add_attribute("capgate.prev", v["prev"].as_str().unwrap_or("").to_owned());
    r.add_attribute("capgate.type", kind);
    for key in ["component", "action", "resource", "decision", "event"] {
        if let Some(s) = v[key].as_str() {
            r.add_attribute(format!("capgate.{key}"), s.to_owned());
        }
    }
    r
}

/// The HTTP/1.1 client the exporter sends with (hyper and rustls, as the rest of capgate).
mod client {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{BodyExt as _, Full, Limited};
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use rustls::pki_types::pem::PemObject as _;

    /// The largest response body read from a collector.
    const MAX_RESPONSE: usize = 1 << 20;

    pub(super) struct Http1 {
        pub(super) timeout: Duration,
        pub(super) tls: Arc<rustls::ClientConfig>,
    }

    impl std::fmt::Debug for Http1 {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Http1")
                .field("timeout", &self.timeout)
                .finish_non_exhaustive()
        }
    }

    /// The TLS client configuration: the Web PKI roots, and those of `ca_file` if given.
    pub(super) fn tls(
        ca_file: Option<&std::path::Path>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        if let Some(path) = ca_file {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!("cannot read CA certificates from `{}`: {e}", path.display())
                })?;
            if certs.is_empty() {
                return Err(format!("`{}` holds no PEM certificate", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("a certificate of `{}`: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    #[async_trait::async_trait]
    impl HttpClient for Http1 {
        async fn send_bytes(&self, req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            tokio::time::timeout(self.timeout, send(req, &self.tls)).await?
        }
    }

    async fn send(
        req: Request<Bytes>,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = req.into_parts();
        let secure = match parts.uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("only http:// and https:// OTLP endpoints are supported".into()),
        };
        let authority = parts
            .uri
            .authority()
            .ok_or("the endpoint has no host")?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()?;
        parts
            .headers
            .insert(http::header::HOST, authority.as_str().parse()?);
        let request = http::Request::from_parts(parts, Full::new(body));
        let response = if secure {
            let name = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::from(ip),
                Err(_) => rustls::pki_types::ServerName::try_from(host.clone())?,
            };
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, stream)
                .await?;
            exchange(stream, request).await?
        } else {
            exchange(stream, request).await?
        };
        let (parts, body) = response.into_parts();
        // The status decides: a 2xx was received, whatever its body does (oversized,
        // broken, or never finishing: it gets a second, then it is only partial-success
        // detail lost).
        let read = Limited::new(body, MAX_RESPONSE).collect();
        let bytes = if parts.status.is_success() {
            match tokio::time::timeout(Duration::from_secs(1), read).await {
                Ok(Ok(b)) => b.to_bytes(),
                _ => Bytes::new(),
            }
        } else {
            read.await?.to_bytes()
        };
        Ok(Response::from_parts(parts, bytes))
    }

    /// One request and its response on a fresh connection.
    async fn exchange<S>(
        stream: S,
        request: http::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, HttpError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(sender.send_request(request).await?)
    }
}
