//! `run` and `policy check`: load a verified policy, then run a command component or report.

use std::path::Path;
use std::sync::Arc;

use capgate::signing::{SecretKey, StateStore, TrustRoot};
use capgate::{Host, HostConfig, VerifiedPolicy};
use serde_json::json;

use super::{CliError, Exit, LogFormat, Report};

/// Where the policy's trust comes from.
pub(super) struct Source<'a> {
    pub policy: &'a Path,
    pub trust: Option<&'a Path>,
    pub state_dir: Option<&'a Path>,
    pub allow_unsigned: bool,
    /// `--audit FILE`.
    pub audit: Option<&'a Path>,
    /// `--audit-key KEY`.
    pub audit_key: Option<&'a Path>,
    /// `--audit-otlp URL`.
    pub audit_otlp: Option<&'a str>,
    /// `--audit-otlp-ca PEM`.
    pub audit_otlp_ca: Option<&'a Path>,
    /// `--policy-name NAME`.
    pub policy_name: Option<&'a str>,
}

/// The rollback state store: `--state-dir`, or the default location.
pub(super) fn state(dir: Option<&Path>) -> Result<StateStore, CliError> {
    match dir {
        Some(d) => Ok(StateStore::at(d)),
        None => StateStore::default_dir().map(StateStore::at).ok_or_else(|| {
            CliError::new(Exit::Usage, "cannot find a state directory: neither `XDG_STATE_HOME` nor `HOME` is set (hint: pass `--state-dir DIR`)")
        }),
    }
}

/// The policy file of `src`: its `--policy`, or the bundle an `oci://` reference was pulled
/// to (which must carry a signature unless `--allow-unsigned`). With `announce`, what a tag
/// resolved to is said on stderr.
pub(super) fn policy_file<'a>(
    src: &Source<'a>,
    announce: bool,
) -> Result<std::borrow::Cow<'a, Path>, CliError> {
    #[cfg(feature = "oci")]
    {
        if !capgate::oci::path_is_reference(src.policy) {
            return Ok(std::borrow::Cow::Borrowed(src.policy));
        }
        let trust = match (src.allow_unsigned, src.trust) {
            (true, _) => None,
            (false, Some(t)) => Some(TrustRoot::load(t)?),
            (false, None) => {
                return Err(CliError::new(
                    Exit::Usage,
                    "`--trust TRUST.yaml` is required to verify the policy (hint: for local development only, `--allow-unsigned` skips verification)",
                ));
            }
        };
        super::oci::local(
            src.policy,
            capgate::oci::Expect::Policy,
            trust.as_ref(),
            announce,
        )
    }
    #[cfg(not(feature = "oci"))]
    {
        let _ = announce;
        Ok(std::borrow::Cow::Borrowed(src.policy))
    }
}

pub(super) fn load(src: &Source<'_>, record: bool) -> Result<VerifiedPolicy, CliError> {
    let file = policy_file(src, true)?;
    // A bundle pulled from a registry lives in the cache: a path it names relative to itself
    // would be in there too (replaced with the next version, or planted by whoever pushed).
    let pulled = pulled_dir(file.clone());
    let src = &Source {
        policy: &file,
        ..*src
    };
    if src.allow_unsigned {
        // `policy check` without `--trust` says so in its report instead.
        if record {
            eprintln!(
                "warning: --allow-unsigned: NO SIGNATURE IS CHECKED on `{}` or its components, and rollback protection is off. For local development only.",
                src.policy.display()
            );
        }
        let policy = capgate::danger::load_unsigned_policy(src.policy)?;
        return named(
            outside(policy, pulled.as_deref(), src.audit.is_some())?,
            src,
        );
    }
    let trust = src.trust.ok_or_else(|| {
        CliError::new(Exit::Usage, "`--trust TRUST.yaml` is required to verify the policy (hint: for local development only, `--allow-unsigned` skips verification)")
    })?;
    let trust = TrustRoot::load(trust)?;
    let state = state(src.state_dir)?;
    let policy = VerifiedPolicy::check(src.policy, &trust, &state)?;
    let policy = named(
        outside(policy, pulled.as_deref(), src.audit.is_some())?,
        src,
    )?;
    if record {
        policy.accept(&state)?;
    }
    Ok(policy)
}

/// `policy`, if it has the name `--policy-name` asks for.
fn named(policy: VerifiedPolicy, src: &Source<'_>) -> Result<VerifiedPolicy, CliError> {
    match src.policy_name {
        Some(want) if policy.policy().name != want => Err(CliError::new(
            Exit::NoPerm,
            format!(
                "the policy is `{}`, not `{want}` as `--policy-name` requires: refused",
                policy.policy().name
            ),
        )),
        _ => Ok(policy),
    }
}

/// The directory of a policy file pulled from a registry (`policy_file` gives one as owned,
/// a file named on the command line as borrowed: `None`).
pub(super) fn pulled_dir(file: std::borrow::Cow<'_, Path>) -> Option<std::path::PathBuf> {
    let std::borrow::Cow::Owned(f) = file else {
        return None;
    };
    // The cache's root: the bundle is laid out in `ROOT/files/HEX/`.
    let root = f.parent()?.parent()?.parent()?;
    Some(std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned()))
}

/// `policy`, unless it was pulled into `cache` and names a path inside it: its audit log
/// (unless `--audit` replaces it) or a host directory.
pub(super) fn outside(
    policy: VerifiedPolicy,
    cache: Option<&Path>,
    audit_given: bool,
) -> Result<VerifiedPolicy, CliError> {
    let Some(cache) = cache else {
        return Ok(policy);
    };
    let p = policy.policy();
    let bundle = p.path.parent().unwrap_or(Path::new("."));
    // A path is in the cache if it is written relative to the bundle (`..` included), or
    // resolves into the cache's root.
    let inside_cache = |path: &Path| {
        let resolved = path
            .parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .map(|d| d.join(path.file_name().unwrap_or_default()));
        path.starts_with(bundle)
            || path.starts_with(cache)
            || resolved.is_some_and(|r| r.starts_with(cache))
    };
    let log = p.audit.log.as_ref().filter(|_| !audit_given);
    let hosts = p
        .components
        .values()
        .flat_map(|c| c.files.iter().map(|f| &f.host));
    if let Some(inside) = log.into_iter().chain(hosts).find(|h| inside_cache(h)) {
        return Err(CliError::new(
            Exit::DataErr,
            format!(
                "policy `{}` was pulled from a registry and names `{}`, a path relative to itself, which is inside the cache (hint: give the audit log with `--audit FILE`, and host directories as absolute paths)",
                p.name,
                inside.display()
            ),
        ));
    }
    Ok(policy)
}

pub(super) struct RunArgs<'a> {
    pub component: Option<&'a str>,
    pub args: &'a [String],
    pub no_cache: bool,
    pub format: LogFormat,
}

/// The host's audit settings from the command line: `--audit FILE` in place of the policy's
/// `audit.log`, `--audit-key KEY` for checkpoints, and this host's salt. The policy's `audit`
/// section itself is applied by the library.
fn audit_config(
    src: &Source<'_>,
    policy: &VerifiedPolicy,
    mut config: HostConfig,
) -> Result<HostConfig, CliError> {
    let has_log = src.audit.is_some() || policy.policy().audit.log.is_some();
    if let Some(k) = src.audit_key {
        if !has_log {
            return Err(CliError::new(
                Exit::Usage,
                "`--audit-key` needs an audit log: pass `--audit FILE` or set `audit.log` in the policy",
            ));
        }
        let key = SecretKey::load(k)?;
        warn_if_not_audit_key(src, &key);
        config = config.audit_key(key);
    }
    if let Some(path) = src.audit {
        config = config.audit_log(path);
    }
    if let Some(url) = src.audit_otlp {
        if let Err(why) = capgate::policy::otlp_endpoint(url) {
            return Err(CliError::new(
                Exit::Usage,
                format!(
                    "`--audit-otlp {url}`: {why} (hint: an OTLP/HTTP logs endpoint, e.g. http://127.0.0.1:4318/v1/logs)"
                ),
            ));
        }
        if !has_log {
            return Err(CliError::new(
                Exit::Usage,
                "`--audit-otlp` exports the local audit log, which stays the source of truth: pass `--audit FILE` or set `audit.log` in the policy",
            ));
        }
        config = config.audit_otlp(url);
        if let Some(ca) = src.audit_otlp_ca {
            config = config.audit_otlp_ca(ca);
        }
    }
    if has_log && let Some(salt) = audit_salt(src) {
        config = config.audit_salt(salt);
    }
    if has_log && let Ok(state) = state(src.state_dir) {
        config = config.audit_state_dir(state.dir());
    }
    Ok(config)
}

/// Warns when checkpoints would be signed by a key the trust root's `audit` role does not
/// hold, so `audit verify` would refuse them.
fn warn_if_not_audit_key(src: &Source<'_>, key: &SecretKey) {
    let Some(trust) = src.trust.and_then(|t| TrustRoot::load(t).ok()) else {
        return;
    };
    let message = b"capgate audit key check";
    let sig = capgate::signing::SignatureEntry::sign(key, message);
    let req = trust.role(capgate::signing::Role::Audit);
    if trust
        .check_signatures(trust.path(), &req, message, &[sig])
        .is_err()
    {
        eprintln!(
            "warning: the audit key `{}` is not enough for the `audit` role of `{}`: `capgate audit verify` will refuse its checkpoints",
            key.public().id(),
            trust.path().display()
        );
    }
}

/// The secret salt of hashed sensitive values, kept in the state directory (created 0600 on
/// first use) so that hashes stay comparable across runs on this host.
fn audit_salt(src: &Source<'_>) -> Option<[u8; 32]> {
    let dir = state(src.state_dir).ok()?.dir().to_owned();
    let path = dir.join("audit-salt");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(salt) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Some(salt);
    }
    let mut salt = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        std::io::Write::write_all(&mut o.open(&path)?, &salt)
    };
    match write() {
        Ok(()) => Some(salt),
        Err(e) => {
            eprintln!(
                "warning: cannot keep the audit salt in `{}` ({e}); hashes in this log use a salt of this run only",
                path.display()
            );
            None
        }
    }
}

/// Denials printed on stderr: at most [`Throttle::PER_SECOND`] lines a second; the rest are
/// counted and said in one line ("N more denials") when the next second begins or at exit.
/// The audit log keeps every one of them.
struct Throttle {
    state: std::sync::Mutex<(Option<std::time::Instant>, u32, u64)>,
    json: std::sync::atomic::AtomicBool,
    /// What is counted.
    what: &'static str,
    /// Where every one of them can still be found, if anywhere.
    note: &'static str,
}

impl Throttle {
    const PER_SECOND: u32 = 20;

    /// The line that says how many were not shown, in the output format in use.
    fn say_held(&self, n: u64) {
        if self.json.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "{}",
                json!({"level": "warn", "event": "not-shown", "count": n, "what": self.what})
            );
        } else {
            eprintln!("capgate: {n} more {} not shown{}", self.what, self.note);
        }
    }

    /// Whether to print this line now.
    fn admit(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let (start, printed, held) = &mut *st;
        if start.is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(1)) {
            if *held > 0 {
                self.say_held(*held);
            }
            *start = Some(now);
            *printed = 0;
            *held = 0;
        }
        if *printed < Self::PER_SECOND {
            *printed += 1;
            true
        } else {
            *held += 1;
            false
        }
    }

    /// Says how many denials were not shown since the last line that did.
    fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.2 > 0 {
            self.say_held(st.2);
            st.2 = 0;
        }
    }
}

static THROTTLE: Throttle = Throttle {
    state: std::sync::Mutex::new((None, 0, 0)),
    json: std::sync::atomic::AtomicBool::new(false),
    what: "denials",
    note: " (every one is in the audit log, if the policy keeps one)",
};

/// Failed requests of `serve`, printed on stderr under their own throttle.
static FAILURES: Throttle = Throttle {
    state: std::sync::Mutex::new((None, 0, 0)),
    json: std::sync::atomic::AtomicBool::new(false),
    what: "failed requests",
    note: "",
};

/// Closes the host's audit logs (final checkpoint); a failure is reported, not fatal.
fn close(host: &Host) {
    THROTTLE.finish();
    FAILURES.finish();
    let missed = host.missed_audit_records();
    if let Err(e) = host.close() {
        eprintln!("warning: {e}");
    }
    if missed > 0 {
        eprintln!(
            "warning: {missed} audit record(s) could not be written (failure mode `continue`)"
        );
    }
    #[cfg(feature = "otlp")]
    if let Some(s) = host.audit_export_stats() {
        let level = if s.dropped > 0 { "warning" } else { "capgate" };
        eprintln!(
            "{level}: exported {} audit record(s) over OTLP; {} dropped from the export (they are in the local log), {} failed attempt(s) retried",
            s.exported, s.dropped, s.failed_attempts
        );
    }
}

/// Instance slots `serve` reserves with the pooling allocator.
const SERVE_POOL: u32 = 1000;

fn host(
    src: &Source<'_>,
    policy: &VerifiedPolicy,
    format: LogFormat,
    no_cache: bool,
    pool: Option<u32>,
) -> Result<Host, CliError> {
    for throttle in [&THROTTLE, &FAILURES] {
        throttle.json.store(
            matches!(format, LogFormat::Json),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let config = HostConfig::new().observe_denials(move |ev| {
        if !THROTTLE.admit() {
            return;
        }
        // A report-only rule's would-be denial was not enforced: it says so.
        let (verb, event) = if ev.enforced {
            ("denied", "deny")
        } else {
            ("report-only rules would deny", "report-deny")
        };
        match format {
            LogFormat::Text => eprintln!(
                "capgate: {verb} `{}` {} {}: {}{}",
                ev.component,
                ev.action,
                super::safe(&ev.resource),
                super::safe(&ev.decision.reason()),
                ev.hint
                    .as_deref()
                    .map(|h| format!(" ({})", super::safe(h)))
                    .unwrap_or_default()
            ),
            LogFormat::Json => eprintln!(
                "{}",
                json!({"level": "warn", "event": event, "component": ev.component, "action": ev.action.as_str(), "resource": ev.resource, "reasons": ev.decision.reasons, "errors": ev.decision.errors, "hint": ev.hint})
            ),
        }
    });
    // A failed request's reason is for the operator: the client gets a bare status.
    let config = config.observe_failures(move |f| {
        if !FAILURES.admit() {
            return;
        }
        match format {
            LogFormat::Text => eprintln!(
                "capgate: request to `{}` answered {}: {}",
                f.component,
                f.status,
                super::safe(&f.detail)
            ),
            LogFormat::Json => eprintln!(
                "{}",
                json!({"level": "warn", "event": "request-failed", "component": f.component, "status": f.status, "detail": f.detail})
            ),
        }
    });
    // Long compilations say so on a terminal, and stay quiet in pipes.
    let config = config.progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let config = match pool {
        Some(n) => config.pooling(n),
        None => config,
    };
    let config = audit_config(src, policy, config)?;
    let host = match capgate_signing::default_cache_dir().filter(|_| !no_cache) {
        Some(dir) => match Host::new(config.clone().cache_dir(&dir)) {
            Err(e @ capgate::RunError::Cache { .. }) => {
                eprintln!("warning: {e}");
                Host::new(config)?
            }
            other => other?,
        },
        None => Host::new(config)?,
    };
    // A fail-closed log that cannot be opened stops everything before a component is chosen,
    // compiled or served.
    host.open_audit(policy)?;
    Ok(host)
}

/// The async runtime: one thread for `run` and `call` (one guest at a time, as `wasmtime run`
/// has it), a thread per core for `serve`.
fn runtime(serving: bool) -> Result<tokio::runtime::Runtime, CliError> {
    let mut builder = if serving {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        CliError::new(
            Exit::Software,
            format!("cannot start the async runtime: {e}"),
        )
    })
}

pub(super) fn run(src: &Source<'_>, a: &RunArgs<'_>) -> Result<i32, CliError> {
    let policy = Arc::new(load(src, true)?);
    let host = host(src, &policy, a.format, a.no_cache, None)?;
    let result = pick_component(&host, &policy, a.component)
        .and_then(|name| Ok(runtime(false)?.block_on(host.run(&policy, &name, a.args))?));
    close(&host);
    result
}

pub(super) fn serve(
    src: &Source<'_>,
    component: &str,
    listen: std::net::SocketAddr,
    no_cache: bool,
    format: LogFormat,
    poll: Option<std::time::Duration>,
) -> Result<Report, CliError> {
    if poll.is_some_and(|d| d < std::time::Duration::from_millis(100)) {
        return Err(CliError::new(
            Exit::Usage,
            "`--poll` must be at least 100ms (hint: `--poll 30s`)",
        ));
    }
    let policy = Arc::new(load(src, true)?);
    let host = Arc::new(host(src, &policy, format, no_cache, Some(SERVE_POOL))?);
    let result = runtime(true)?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            CliError::new(
                Exit::CantCreate,
                format!("cannot listen on `{listen}`: {e}"),
            )
        })?;
        let addr = listener
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string());
        eprintln!(
            "capgate: serving `{component}` of policy `{}` on http://{addr} (Ctrl-C or SIGTERM stops)",
            policy.policy().name
        );
        let shutdown = async {
            stop_signal().await;
            eprintln!("capgate: shutting down; letting requests in flight finish");
        };
        let source = src.policy.display().to_string();
        let (versions_tx, versions) = tokio::sync::watch::channel(policy.clone());
        let poller = poll.map(|every| {
            tokio::spawn(super::poll::watch(
                super::poll::Polled::of(src),
                every,
                versions_tx.clone(),
                host.clone(),
                component.to_owned(),
                source.clone(),
            ))
        });
        let served = capgate::serve_versions(
            host.clone(),
            versions,
            component,
            listener,
            shutdown,
            &source,
        )
        .await;
        if let Some(p) = poller {
            p.abort();
        }
        drop(versions_tx);
        served?;
        // With the server's other messages, on stderr; stdout stays empty.
        match format {
            LogFormat::Text => eprintln!("capgate: stopped"),
            LogFormat::Json => eprintln!("{}", json!({ "event": "stopped" })),
        }
        Ok(Report::nothing())
    });
    close(&host);
    result
}

/// Ctrl-C, or on Unix SIGTERM (what service managers and `kill` send): either stops `serve`
/// cleanly, closing the audit log with its final checkpoint.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub(super) fn call(
    src: &Source<'_>,
    component: &str,
    function: &str,
    args: &[String],
    no_cache: bool,
) -> Result<Report, CliError> {
    let policy = Arc::new(load(src, true)?);
    let host = host(src, &policy, LogFormat::Text, no_cache, None)?;
    let results = runtime(false)
        .and_then(|rt| Ok(rt.block_on(host.call(&policy, component, function, args))?));
    close(&host);
    let results = results?;
    Ok(Report::new(
        results.join("\n"),
        json!({ "results": results }),
    ))
}

/// The component named, or the only one that is a command.
fn pick_component(
    host: &Host,
    policy: &VerifiedPolicy,
    named: Option<&str>,
) -> Result<String, CliError> {
    if let Some(n) = named {
        return Ok(n.to_owned());
    }
    let names: Vec<&String> = policy.policy().components.keys().collect();
    if let [only] = names.as_slice() {
        return Ok((*only).clone());
    }
    let mut commands = Vec::new();
    for n in &names {
        let c = host.compile(policy, n)?;
        if c.component_type()
            .exports(host.engine())
            .any(|(e, _)| e.starts_with("wasi:cli/run@"))
        {
            commands.push((*n).clone());
        }
    }
    match commands.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::new(
            Exit::Usage,
            "no component of this policy exports `wasi:cli/run` (hint: `capgate serve` or `capgate call` run other kinds)",
        )),
        many => Err(CliError::new(
            Exit::Usage,
            format!(
                "several components are commands ({}); choose one with `--component NAME`",
                many.join(", ")
            ),
        )),
    }
}

pub(super) fn check(src: &Source<'_>) -> Result<Report, CliError> {
    let policy = load(src, false)?;
    let p = policy.policy();
    let lints: Vec<String> = policy
        .authority()
        .lints()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut text = format!(
        "ok: policy `{}` version {} ({} component{}, {} rules file{}){}",
        p.name,
        p.version,
        p.components.len(),
        if p.components.len() == 1 { "" } else { "s" },
        p.rules.len(),
        if p.rules.len() == 1 { "" } else { "s" },
        if src.trust.is_some() {
            ", signatures verified"
        } else {
            ", signatures not checked (no `--trust`)"
        }
    );
    for (name, c) in &p.components {
        let grants = c.grant_count();
        text.push_str(&format!(
            "\n  {name}: {grants} grant{}",
            if grants == 1 { "" } else { "s" }
        ));
    }
    // Without a digest pin, any other artifact signed by the same key gets the component's
    // grants (an older, vulnerable build, say): said loudly, with the pin to add.
    let mut lints = lints;
    for (name, c) in &p.components {
        if c.sha256.is_none()
            && let Some(a) = policy.artifact(name)
        {
            lints.push(format!(
                "component `{name}` is not pinned: any artifact signed by the same key would get its grants (hint: add `sha256: {}` under `{name}`)",
                a.report().sha256
            ));
        }
    }
    for l in &lints {
        text.push_str(&format!("\nwarning: {l}"));
    }
    let report = policy.authority().report_only();
    if !report.is_empty() {
        text.push_str(&format!(
            "\nnote: report-only rules (recorded, not enforced): {}",
            report
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(Report::new(
        text,
        json!({"ok": true, "name": p.name, "version": p.version, "components": p.components.keys().collect::<Vec<_>>(), "warnings": lints, "report_only": report}),
    ))
}

pub(super) fn suggest(component: &Path, name: Option<&str>) -> Result<Report, CliError> {
    let bytes = capgate::signing::read_regular(component, 512 * 1024 * 1024)?;
    // A name the policy format accepts: lowercase letters, digits and dashes.
    let derived: String = component
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.map_or(derived, str::to_owned);
    // It names the component too, so it follows the component names' rule.
    if !capgate::policy::is_ident(&name) {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "`{name}` is not a valid name: expected a lowercase letter, then `[a-z0-9-]*` (hint: pass `--name my-app`)"
            ),
        ));
    }
    let yaml = capgate::inspect::suggest(&bytes, &component.display().to_string(), &name)
        .map_err(|e| CliError::new(Exit::DataErr, format!("{}: {e}", component.display())))?;
    Ok(Report::new(yaml.trim_end(), json!({ "policy": yaml })))
}

pub(super) fn inspect(
    component: &Path,
    policy: Option<&Path>,
    name: Option<&str>,
) -> Result<Report, CliError> {
    use capgate::inspect::Coverage;
    // A component is read as a policy's artifact is: a regular file, bounded.
    let bytes = capgate::signing::read_regular(component, 512 * 1024 * 1024)?;
    // The policy is read for its grants only; nothing runs, so no signature is needed.
    let loaded = match policy {
        Some(p) => Some(capgate::danger::load_unsigned_policy(p)?),
        None => None,
    };
    let shown = || policy.map(|p| p.display().to_string()).unwrap_or_default();
    let spec = match (&loaded, name) {
        (Some(l), Some(n)) => Some(l.policy().components.get(n).ok_or_else(|| {
            CliError::new(Exit::Usage, format!("no component `{n}` in `{}`", shown()))
        })?),
        // A policy of one component needs no `--component`.
        (Some(l), None) => {
            let all = &l.policy().components;
            match all.values().next() {
                Some(only) if all.len() == 1 => Some(only),
                _ => {
                    return Err(CliError::new(
                        Exit::Usage,
                        format!(
                            "`{}` has {} components; say which with `--component NAME` (one of {})",
                            shown(),
                            all.len(),
                            all.keys()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        _ => None,
    };
    let found = capgate::inspect::inspect(&bytes, spec)
        .map_err(|e| CliError::new(Exit::DataErr, format!("{}: {e}", component.display())))?;
    let mut text = format!("{}\nimports:", component.display());
    let mut missing = 0;
    for i in &found.imports {
        let note = match &i.coverage {
            None => String::new(),
            Some(Coverage::Always) => "  always provided".into(),
            Some(Coverage::Granted(what)) => format!("  granted: {what}"),
            Some(Coverage::Denied(why)) => format!("  linked, every use denied: {why}"),
            Some(Coverage::Missing(why)) => {
                missing += 1;
                format!("  NOT PROVIDED: {why}")
            }
            Some(_) => String::new(),
        };
        text.push_str(&format!("\n  {}  [{}]{note}", i.name, i.key));
        if !i.functions.is_empty() {
            text.push_str(&format!("\n    functions: {}", i.functions.join(", ")));
        }
    }
    text.push_str("\nexports:");
    for e in &found.exports {
        text.push_str(&format!("\n  {e}"));
    }
    let imports: Vec<serde_json::Value> = found
        .imports
        .iter()
        .map(|i| json!({"name": i.name, "key": i.key, "functions": i.functions, "coverage": i.coverage.as_ref().map(|c| format!("{c:?}"))}))
        .collect();
    // A component that will not instantiate under the policy is an error (65), after the
    // listing that shows why.
    if missing > 0 {
        println!("{text}");
        return Err(CliError::new(
            Exit::DataErr,
            format!(
                "{missing} import{} not provided: `{}` will not instantiate under this policy",
                if missing == 1 { " is" } else { "s are" },
                component.display()
            ),
        ));
    }
    Ok(Report::new(
        text,
        json!({"imports": imports, "exports": found.exports}),
    ))
}
