//! The `capgate` command line: argument parsing, exit codes and error rendering.
//!
//! Each subcommand is a few lines over one library call, so everything the CLI does can be
//! tested through the library too. This module owns the mapping from errors to the exit codes
//! of the spec; it never makes a trust decision itself.

mod audit;
mod diff;
mod exit;
mod keys;
mod learn;
#[cfg(feature = "oci")]
mod oci;
mod poll;
mod run;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub(crate) use exit::{CliError, Exit};

/// Run WebAssembly components under signed, capability-based policies.
#[derive(Debug, Parser)]
#[command(name = "capgate", version, about, long_about = None, disable_help_subcommand = true)]
pub(crate) struct Cli {
    /// How errors and results are printed: `text` (lines a person can act on) or `json` (one
    /// object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        hide_possible_values = true,
        display_order = 1000,
        value_name = "text|json"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// Output format for errors and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One or two lines a person can act on.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a `wasi:cli/run` component under a signed policy.
    Run {
        #[command(flatten)]
        source: PolicyArgs,
        /// The component to run [default: the policy's only command].
        #[arg(long, value_name = "NAME")]
        component: Option<String>,
        /// Arguments passed to the guest after the policy's `args`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Generate an Ed25519 key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (SPKI PEM).
    Keygen {
        /// Path prefix of the two files to write.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign an artifact or a policy bundle, creating or extending FILE.sig.
    Sign {
        #[arg(value_enum)]
        kind: Kind,
        /// The file to sign.
        file: PathBuf,
        /// The private key (PKCS#8 PEM).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// If FILE.sig holds signatures over content FILE no longer has (FILE was edited),
        /// discard them and start FILE.sig afresh with this signature. Without it, signing
        /// an edited file is refused, so no co-signer's approval is dropped silently.
        #[arg(long)]
        replace: bool,
        /// Where this host remembers accepted policies: a policy is signed after its delta
        /// against the version accepted there is printed.
        /// [default: $XDG_STATE_HOME/capgate, else ~/.local/state/capgate]
        #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Verify an artifact or a policy bundle against a trust root.
    Verify {
        #[arg(value_enum)]
        kind: Kind,
        /// The signed file (its signature is FILE.sig).
        file: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Check a policy (parse it, validate its rules, verify signatures with `--trust`, report
    /// lints), or print the Cedar schema rules are checked against.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show what a component imports and exports and, with a policy, which imports it grants.
    Inspect {
        /// The component (.wasm).
        component: PathBuf,
        /// A policy to compare the imports with.
        #[arg(long, value_name = "POLICY.yaml")]
        policy: Option<PathBuf>,
        /// The component's name in the policy (needed when it has more than one).
        #[arg(
            long = "component",
            value_name = "NAME",
            id = "name",
            requires = "policy"
        )]
        name: Option<String>,
    },
    /// Serve a `wasi:http/incoming-handler` component over HTTP, until Ctrl-C or SIGTERM.
    Serve {
        #[command(flatten)]
        source: PolicyArgs,
        /// The component to serve.
        #[arg(long, value_name = "NAME")]
        component: String,
        /// The address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Read `--policy` again this often (e.g. `30s`; a file or an `oci://` tag). A new
        /// version is verified like the first (signatures, threshold, rollback, expiry) and
        /// activated atomically; one that fails is refused and the current one goes on.
        #[arg(long, value_name = "DURATION")]
        poll: Option<capgate::policy::units::Span>,
    },
    /// Call an exported function of a component; arguments and results are WAVE text.
    Call {
        #[command(flatten)]
        source: PolicyArgs,
        /// The component.
        component: String,
        /// `interface#function` (e.g. `example:image/image-processor#get-dimensions`) or a
        /// top-level export.
        function: String,
        /// Arguments, each a WAVE value (e.g. `"text"`, `42`, `[1, 2]`, `{x: 1}`).
        #[arg(value_name = "ARGS", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Push a signed component or policy bundle, with its signature file, to an OCI
    /// registry (`oci://HOST[:PORT]/REPOSITORY:TAG`; basic-auth credentials from
    /// CAPGATE_REGISTRY_USERNAME and CAPGATE_REGISTRY_PASSWORD).
    #[cfg(feature = "oci")]
    Push {
        #[arg(value_enum)]
        kind: Kind,
        /// The signed file (its signature is FILE.sig).
        file: PathBuf,
        /// Where to push it: `oci://HOST[:PORT]/REPOSITORY:TAG`.
        #[arg(value_name = "oci://HOST/REPO:TAG")]
        target: String,
    },
    /// Verify, query, summarise and replay audit logs.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Parse and validate a policy and its rules; verify signatures with `--trust`.
    Check {
        /// The policy (YAML).
        policy: PathBuf,
        /// The trust root; without it, signatures are not checked.
        #[arg(long, value_name = "TRUST.yaml")]
        trust: Option<PathBuf>,
        /// Where accepted policy versions are remembered (read only here).
        #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Print the Cedar schema every rule is validated against: the entities, the actions and
    /// the context of each.
    Schema,
    /// Print a starter policy for a component: every capability its imports could use, each
    /// commented out (denied) with the key that grants it, and its artifact pinned.
    Suggest {
        /// The component (.wasm).
        component: PathBuf,
        /// The policy's and the component's name [default: from the file name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// The permission delta from OLD to NEW: every grant added, removed, widened or narrowed,
    /// every limit raised or lowered, and the requests a change of rules newly allows or
    /// denies (decided with the cvc5 solver when it is installed).
    Diff {
        /// The old version (YAML).
        old: PathBuf,
        /// The new version (YAML).
        new: PathBuf,
        /// Also replay these audit logs under NEW and list the recorded requests whose
        /// decision would change (repeatable).
        #[arg(long = "log", value_name = "LOG")]
        logs: Vec<PathBuf>,
    },
    /// Write the narrowest policy that still allows every request a broad policy allowed in
    /// audit logs (written under `audit: { level: all }`), and prove it by replaying the logs.
    Learn {
        /// The audit log(s) of runs under the broad policy.
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// The broad policy the logs were written under.
        #[arg(long, value_name = "BROAD.yaml")]
        policy: PathBuf,
        /// The trust root the broad policy is verified against.
        #[arg(long, value_name = "TRUST.yaml")]
        trust: Option<PathBuf>,
        /// Do not check the broad policy's signatures (a draft not yet signed).
        #[arg(long)]
        allow_unsigned: bool,
        /// Where accepted policy versions are remembered (read only here).
        #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Where to write the learned policy, in the broad policy's directory; never
        /// overwritten [default: NAME.learned.yaml beside the broad policy].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// What is being signed or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// A component artifact (.wasm).
    Artifact,
    /// A policy YAML and every file it references.
    Policy,
}

#[derive(Debug, Args)]
struct TrustArgs {
    /// The trust root (YAML).
    #[arg(long, value_name = "TRUST.yaml")]
    trust: PathBuf,
    /// Where accepted policy versions are remembered (rollback protection).
    /// [default: $XDG_STATE_HOME/capgate, else ~/.local/state/capgate]
    #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl TrustArgs {
    fn state(&self) -> Result<capgate_signing::StateStore, CliError> {
        run::state(self.state_dir.as_deref())
    }
}

/// Where a policy comes from and how it is trusted: shared by `run`, `serve` and `call`.
#[derive(Debug, Args)]
struct PolicyArgs {
    /// The policy (YAML).
    #[arg(long, value_name = "POLICY.yaml")]
    policy: PathBuf,
    /// The trust root; required unless `--allow-unsigned`.
    #[arg(long, value_name = "TRUST.yaml")]
    trust: Option<PathBuf>,
    /// DANGER: run without checking any signature. For local development only.
    #[arg(long)]
    allow_unsigned: bool,
    /// Where accepted policy versions are remembered.
    #[arg(long, value_name = "DIR", env = "CAPGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Do not use the compilation cache ($XDG_CACHE_HOME/capgate).
    #[arg(long)]
    no_cache: bool,
    /// Write the audit log here [default: the policy's `audit.log`, else no log].
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// Sign audit checkpoints with this key (it should hold the trust root's `audit` role).
    #[arg(long, value_name = "KEY")]
    audit_key: Option<PathBuf>,
    /// Also export every audit record as an OpenTelemetry log record to this OTLP/HTTP
    /// endpoint (e.g. `http://127.0.0.1:4318/v1/logs`); the local log stays the source of
    /// truth [default: the policy's `audit.otlp`].
    #[arg(long, value_name = "URL", env = "CAPGATE_AUDIT_OTLP")]
    audit_otlp: Option<String>,
    /// Certificates (PEM) an `https://` OTLP endpoint may chain to, besides the Web PKI
    /// roots (a private CA of the collector).
    #[arg(
        long,
        value_name = "PEM",
        env = "CAPGATE_AUDIT_OTLP_CA",
        requires = "audit_otlp"
    )]
    audit_otlp_ca: Option<PathBuf>,
    /// Refuse the policy unless its `name` is this (exit 77): pins which policy an
    /// `oci://` tag may hold, across restarts too.
    #[arg(long, value_name = "NAME")]
    policy_name: Option<String>,
}

impl PolicyArgs {
    fn source(&self) -> run::Source<'_> {
        run::Source {
            policy: &self.policy,
            trust: self.trust.as_deref(),
            state_dir: self.state_dir.as_deref(),
            allow_unsigned: self.allow_unsigned,
            audit: self.audit.as_deref(),
            audit_key: self.audit_key.as_deref(),
            audit_otlp: self.audit_otlp.as_deref(),
            audit_otlp_ca: self.audit_otlp_ca.as_deref(),
            policy_name: self.policy_name.as_deref(),
        }
    }
}

/// A successful command's report: a line for people, fields for `--log-format json`.
pub(crate) struct Report {
    text: String,
    json: serde_json::Value,
}

impl Report {
    fn new(text: impl Into<String>, json: serde_json::Value) -> Self {
        Self {
            text: text.into(),
            json,
        }
    }

    /// This report with `text` before its own, and `json` under `key`.
    fn prefixed(mut self, text: &str, key: &str, json: serde_json::Value) -> Self {
        self.text = format!("{text}\n{}", self.text);
        if let Some(o) = self.json.as_object_mut() {
            o.insert(key.to_owned(), json);
        }
        self
    }

    /// A command that has said everything it had to say already (on stderr).
    fn nothing() -> Self {
        Self::new("", serde_json::Value::Null)
    }
}

/// Parses `std::env::args`, runs the command and returns the process exit code.
pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Exit::Usage as u8,
                _ => Exit::Usage as u8,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let format = cli.log_format;
    if let Command::Run {
        source,
        component,
        args,
    } = &cli.command
    {
        let a = run::RunArgs {
            component: component.as_deref(),
            args,
            no_cache: source.no_cache,
            format,
        };
        return match run::run(&source.source(), &a) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                e.print(format);
                ExitCode::from(e.exit as u8)
            }
        };
    }
    match run(cli) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let _ = match format {
                _ if report.json.is_null() => Ok(()),
                LogFormat::Text => writeln!(out, "{}", report.text),
                LogFormat::Json => writeln!(out, "{}", report.json),
            };
            ExitCode::SUCCESS
        }
        Err(e) => {
            e.print(format);
            ExitCode::from(e.exit as u8)
        }
    }
}

fn run(cli: Cli) -> Result<Report, CliError> {
    let format = cli.log_format;
    match cli.command {
        Command::Keygen { out, force } => keys::keygen(&out, force),
        Command::Sign {
            kind,
            file,
            key,
            replace,
            state_dir,
        } => {
            // What a co-signer approves: the delta against what this host runs.
            let delta = match kind {
                Kind::Policy => Some(delta_against_accepted(&file, state_dir.as_deref())),
                Kind::Artifact => None,
            };
            let signed = keys::sign(kind, &file, &key, replace)?;
            Ok(match delta {
                Some((text, json)) => signed.prefixed(&text, "delta", json),
                None => signed,
            })
        }
        Command::Verify { kind, file, trust } => keys::verify(kind, &file, &trust),
        #[cfg(feature = "oci")]
        Command::Push { kind, file, target } => oci::push(kind, &file, &target),
        Command::Policy {
            command:
                PolicyCommand::Check {
                    policy,
                    trust,
                    state_dir,
                },
        } => run::check(&run::Source {
            policy: &policy,
            trust: trust.as_deref(),
            state_dir: state_dir.as_deref(),
            allow_unsigned: trust.is_none(),
            audit: None,
            audit_key: None,
            audit_otlp: None,
            audit_otlp_ca: None,
            policy_name: None,
        }),
        Command::Policy {
            command: PolicyCommand::Suggest { component, name },
        } => run::suggest(&component, name.as_deref()),
        Command::Policy {
            command:
                PolicyCommand::Learn {
                    logs,
                    policy,
                    trust,
                    allow_unsigned,
                    state_dir,
                    out,
                },
        } => {
            if trust.is_none() && !allow_unsigned {
                return Err(CliError::new(
                    Exit::Usage,
                    "`--trust TRUST.yaml` is required to verify the broad policy (hint: `--allow-unsigned` reads an unsigned draft)",
                ));
            }
            let src = run::Source {
                policy: &policy,
                trust: trust.as_deref(),
                state_dir: state_dir.as_deref(),
                allow_unsigned: trust.is_none(),
                audit: None,
                audit_key: None,
                audit_otlp: None,
                audit_otlp_ca: None,
                policy_name: None,
            };
            learn::learn(&logs, &src, out.as_deref())
        }
        Command::Policy {
            command: PolicyCommand::Diff { old, new, logs },
        } => diff::diff(&old, &new, &logs),
        Command::Policy {
            command: PolicyCommand::Schema,
        } => Ok(Report::new(
            capgate::authz::SCHEMA.trim_end(),
            serde_json::json!({ "schema": capgate::authz::SCHEMA }),
        )),
        Command::Audit { command } => audit::run(command, format),
        Command::Inspect {
            component,
            policy,
            name,
        } => run::inspect(&component, policy.as_deref(), name.as_deref()),
        Command::Call {
            source,
            component,
            function,
            args,
        } => run::call(
            &source.source(),
            &component,
            &function,
            &args,
            source.no_cache,
        ),
        Command::Serve {
            source,
            component,
            listen,
            poll,
        } => run::serve(
            &source.source(),
            &component,
            listen,
            source.no_cache,
            format,
            poll.map(|s| s.duration()),
        ),
        // INVARIANT: `main` handles `run` before calling this function.
        Command::Run { .. } => unreachable!("run is dispatched in main"),
    }
}

/// `text` as it may be shown on a terminal: control characters (newlines, escape sequences),
/// bidirectional overrides and backslashes written as escapes, so a string a guest chose
/// cannot forge a line or recolour the screen. JSON output needs none of this.
/// The delta of the policy at `file` against the version of it this host accepted (the copy
/// the state store keeps), as text and JSON. Never an error: what cannot be compared is said.
fn delta_against_accepted(
    file: &std::path::Path,
    state_dir: Option<&std::path::Path>,
) -> (String, serde_json::Value) {
    use serde_json::json;
    let new = match diff::read(file) {
        Ok(p) => p,
        Err(e) => {
            return (
                format!("delta: not computed, the policy cannot be read: {e}"),
                json!({"compared": false, "why": e.to_string()}),
            );
        }
    };
    let Ok(state) = run::state(state_dir) else {
        return (
            "delta: not computed, no state directory (pass `--state-dir`)".into(),
            json!({"compared": false, "why": "no state directory"}),
        );
    };
    let Some(kept) = state.kept(&new.0.name) else {
        return (
            format!(
                "delta: no intact copy of a version of `{}` accepted on this host (state directory {}): nothing to compare",
                new.0.name,
                state.dir().display()
            ),
            json!({"compared": false, "why": "no accepted version"}),
        );
    };
    match diff::read(&kept) {
        Ok(old) => {
            let delta = diff::delta(&old, &new);
            let (old, new) = (old.0, &new.0);
            let rules = capgate::diff::rules::delta(&old, new);
            (
                format!(
                    "delta against the version this host accepted:\n{}",
                    diff::render(&old, new, &delta, &rules)
                ),
                json!({"compared": true, "old_version": old.version, "changes": delta.changes, "rules": rules}),
            )
        }
        Err(e) => (
            format!("delta: not computed, the accepted copy cannot be read: {e}"),
            json!({"compared": false, "why": e.to_string()}),
        ),
    }
}

pub(crate) fn safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}
