//! `serve`: a component that exports `wasi:http/incoming-handler`, behind an HTTP listener.
//!
//! Each request gets a fresh instance in a fresh store, with the component's own grants and
//! limits and its links to other components (served by the shared callees). At most
//! `limits.instances` requests run at once; more wait. A request whose handler is refused a
//! call gets `403`, one whose handler traps or hits a limit `500`, each with a bare status
//! text: the reason goes to the host's [failure observer](crate::HostConfig::observe_failures)
//! and never to the client. The server goes on. On shutdown the listener stops
//! accepting and requests in flight are given time to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::broker::CallDenied;
use super::config::RequestFailure;
use super::error::{RunError, check_expiry, no_such};
use super::host::Host;
use super::scope::ScopeRef;
use super::store::{self, State};
use super::wasi::body::Capped;
use crate::gate::Gate;
use crate::policy::Limits;
use crate::verified::VerifiedPolicy;

/// How long requests in flight may run after shutdown begins.
const GRACE: Duration = Duration::from_secs(10);

/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 1024;

/// How long a client has to send a request's headers, from the start of the connection or
/// the end of the previous request; a slower one is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest one connection is kept, however busy (a client that keeps one open for ever
/// holds a place and a descriptor).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// The pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// hyper's timer, on tokio's clock (for the header timeout).
#[derive(Clone, Copy, Debug)]
struct TokioTimer;

/// One of [`TokioTimer`]'s sleeps.
struct TokioSleep(std::pin::Pin<Box<tokio::time::Sleep>>);

impl Future for TokioSleep {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for TokioSleep {}

impl hyper::rt::Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep_until(
            deadline.into(),
        ))))
    }
}

/// Why a request got no response from its handler.
enum Failed {
    /// A call the handler made was denied.
    Denied(String),
    /// The handler trapped, hit a limit, or answered nothing.
    Fault(String),
}

struct Served {
    host: Arc<Host>,
    gate: Gate,
    limits: Limits,
    component: String,
    pre: ProxyPre<State>,
    permits: Arc<tokio::sync::Semaphore>,
}

fn text(status: u16, message: String) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(Bytes::from(message + "\n"))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut r = hyper::Response::new(body);
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

impl Served {
    /// What serving `component` of `policy` needs: its limits, gate and pre-instantiated
    /// handler (compiled and linked).
    fn new(
        host: &Arc<Host>,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
    ) -> Result<Self, RunError> {
        let (limits, pre) = handler(host, policy, component)?;
        Ok(Self {
            host: host.clone(),
            gate: host.gate(policy, component)?,
            limits,
            component: component.to_owned(),
            pre,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.instances as usize)),
        })
    }

    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        // The permit travels with the guest's task, which may outlive the response head while
        // it streams the body: `limits.instances` bounds running guests, not open responses.
        let limit = self.limits.body.bytes();
        let announced = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = announced.filter(|n| *n > limit) {
            return self.failed(
                413,
                format!("the request body is {n} bytes; `limits.body` allows {limit}"),
            );
        }
        if self.gate.policy().expired() {
            return text(503, "capgate: the policy has expired".into());
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return text(503, "capgate: shutting down".into());
        };
        let req = req.map(|inner| Capped::request(inner, limit));
        match self.handle_inner(req, permit).await {
            // The guest's response body is capped too: past the limit the connection is cut.
            Ok(r) => r.map(|b| Capped::response(b, limit).boxed_unsync()),
            Err(Failed::Denied(why)) => self.failed(403, why),
            Err(Failed::Fault(why)) => self.failed(500, why),
        }
    }

    /// The answer to a failed request: its status and the status's own text, nothing more;
    /// `detail` goes to the host's failure observer.
    fn failed(&self, status: u16, detail: String) -> hyper::Response<HyperOutgoingBody> {
        self.host.report_failure(&RequestFailure {
            component: self.component.clone(),
            status,
            detail,
        });
        let reason = hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        text(status, reason.to_lowercase())
    }

    async fn handle_inner(
        &self,
        req: hyper::Request<Capped<hyper::body::Incoming>>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Failed> {
        let fault = |e: wasmtime::Error| Failed::Fault(e.to_string());
        let mut store = store::new_store(
            self.host.engine(),
            &self.gate,
            &self.limits,
            &[],
            ScopeRef::owner(),
        )
        .map_err(fault)?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(fault)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(fault)?;
        // Instantiation runs guest code (start functions), under the timeout too.
        let proxy = store::backstop(&self.limits, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|e| {
                let refused = store.data().limiter_refused();
                Failed::Fault(store::describe_failure(
                    &self.component,
                    &self.limits,
                    e,
                    refused,
                ))
            })?;
        let limits = self.limits;
        let component = self.component.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let call = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out);
            let r = store::backstop(&limits, call).await;
            r.map_err(|e| match e.downcast_ref::<CallDenied>() {
                Some(denied) => Failed::Denied(denied.to_string()),
                None => Failed::Fault(store::describe_failure(
                    &component,
                    &limits,
                    e,
                    store.data().limiter_refused(),
                )),
            })
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(Failed::Fault(format!(
                "the handler answered with an error: {code:?}"
            ))),
            // The handler ended without a response: report why.
            Err(_) => match task.await {
                Ok(Err(why)) => Err(why),
                Ok(Ok(())) => Err(Failed::Fault(
                    "the handler returned without setting a response".into(),
                )),
                Err(e) => Err(Failed::Fault(e.to_string())),
            },
        }
    }
}

/// `component`'s limits and its handler, compiled, linked and pre-instantiated: what serving
/// it needs besides its gate (which opens the policy's audit log).
fn handler(
    host: &Arc<Host>,
    policy: &Arc<VerifiedPolicy>,
    component: &str,
) -> Result<(Limits, ProxyPre<State>), RunError> {
    let limits = host
        .limits(policy, component)
        .ok_or_else(|| no_such(policy, component))?;
    let (compiled, linker) = host.linked(policy, component)?;
    let not_a_handler = |e: wasmtime::Error| RunError::Instantiate {
        component: component.to_owned(),
        message: format!(
            "it cannot serve HTTP (it must export `wasi:http/incoming-handler`): {}",
            e.root_cause()
        ),
        source: Some(e.into()),
    };
    let pre = ProxyPre::new(linker.instantiate_pre(&compiled).map_err(not_a_handler)?)
        .map_err(not_a_handler)?;
    Ok((limits, pre))
}

/// Serves `component` of `policy` on `listener` until `shutdown` completes, then lets requests
/// in flight finish (for up to 10 seconds).
pub async fn serve(
    host: Arc<Host>,
    policy: Arc<VerifiedPolicy>,
    component: &str,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (_fixed, versions) = tokio::sync::watch::channel(policy);
    serve_versions(host, versions, component, listener, shutdown, "").await
}

/// Whether `component` of `policy` can be served on `host`: it exists, compiles, links and
/// exports `wasi:http/incoming-handler`. What [`serve_versions`] checks before it activates
/// a version.
pub fn servable(
    host: &Arc<Host>,
    policy: &Arc<VerifiedPolicy>,
    component: &str,
) -> Result<(), RunError> {
    handler(host, policy, component).map(drop)
}

/// [`serve`], with the policy replaced while serving: each version sent on `versions` (which
/// must be verified, as every [`VerifiedPolicy`] is) is activated atomically. A request is
/// decided, start to end, under the version current when it arrived; requests in flight
/// finish under theirs; none fails because of the switch. A version that cannot serve
/// `component` is refused and the one before goes on. Each activation and refusal, and the
/// expiry of the version served, is an audit record (`"type": "policy"`, with `source`) in
/// the log of the version it concerns. When the version served expires, serving stops as
/// [`serve`]'s does.
pub async fn serve_versions(
    host: Arc<Host>,
    mut versions: tokio::sync::watch::Receiver<Arc<VerifiedPolicy>>,
    component: &str,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    source: &str,
) -> Result<(), RunError> {
    use crate::audit::PolicyChange;
    let mut policy = versions.borrow_and_update().clone();
    let (current, served_now) =
        tokio::sync::watch::channel(Arc::new(Served::new(&host, &policy, component)?));
    let mut updating = true;
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    // The policy stops being served when it expires: the listener closes, requests in flight
    // finish, and `serve` returns the expiry as its error.
    let mut expiry = deadline(&policy);
    let expired = tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now));
    tokio::pin!(expired);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = &mut expired, if expiry.is_some() => break,
            changed = versions.changed(), if updating => {
                if changed.is_err() {
                    updating = false;
                    continue;
                }
                let next = versions.borrow_and_update().clone();
                if next.id() == policy.id() {
                    continue;
                }
                match Served::new(&host, &next, component) {
                    Ok(served) => {
                        current.send_replace(Arc::new(served));
                        let _ = host.record_policy_event(&next, PolicyChange::Activated, source, Some(&policy), None);
                        eprintln!(
                            "capgate: policy `{}` version {} activated (was version {}); requests in flight finish under the version they started with",
                            next.policy().name, next.policy().version, policy.policy().version
                        );
                        host.retire(&policy);
                        policy = next;
                        expiry = deadline(&policy);
                        expired.as_mut().reset(expiry.unwrap_or_else(tokio::time::Instant::now));
                    }
                    Err(e) => {
                        let reason = format!("version {} cannot serve `{component}`: {e}", next.policy().version);
                        eprintln!("capgate: refused policy `{}` {reason}; version {} goes on serving", next.policy().name, policy.policy().version);
                        let _ = host.record_policy_event(&policy, PolicyChange::Refused, source, None, Some(reason));
                    }
                }
            }
            // Reap finished connections as they end, or the set keeps one entry per
            // connection ever served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // At most MAX_CONNECTIONS at once: past it, new clients wait in the kernel's
            // queue until one ends.
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                let stream = match accepted {
                    // A response's head and body may leave in separate writes: without
                    // TCP_NODELAY, Nagle holds the second until the client's delayed ACK
                    // (40 ms), which set the server's tail latency.
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        stream
                    }
                    // Out of descriptors (or another passing failure): back off instead of
                    // spinning on accept, and let connections end meanwhile.
                    Err(_) => {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let served_now = served_now.clone();
                connections.spawn(async move {
                    // Each request takes the version current when it arrives, and keeps it.
                    let service = hyper::service::service_fn(move |req| {
                        let served = served_now.borrow().clone();
                        async move { Ok::<_, Infallible>(served.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer)
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(wasmtime_wasi_http::io::TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                });
            }
        }
    }
    drop(listener);
    if expiry.is_some() && policy.expired() {
        eprintln!(
            "capgate: policy `{}` version {} has expired; no longer serving, letting requests in flight finish",
            policy.policy().name,
            policy.policy().version
        );
        let _ = host.record_policy_event(&policy, PolicyChange::Expired, source, None, None);
    }
    // Let requests in flight finish, within the grace period.
    let _ = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    current.borrow().permits.close();
    check_expiry(&policy)
}

/// When `policy` expires, on tokio's clock.
fn deadline(policy: &VerifiedPolicy) -> Option<tokio::time::Instant> {
    policy.expires().map(|at| {
        let left = at - time::OffsetDateTime::now_utc();
        tokio::time::Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO)
    })
}
