//! Helpers shared by the integration tests: the real `capgate` binary, temp dirs, key files.
#![allow(unreachable_pub)]
#![allow(dead_code)]

pub mod guests;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The result of one `capgate` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Wraps a finished process.
    pub fn from_output(out: Output) -> Self {
        Self::from(out)
    }

    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }
}

/// A scratch directory with its own rollback state, where `capgate` runs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }

    /// Runs `capgate ARGS` in this sandbox (cwd = sandbox, state dir inside it).
    pub fn capgate<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Run::from(self.command(args).output().expect("run capgate"))
    }

    /// The `capgate ARGS` command [`Sandbox::capgate`] runs, to adjust before running.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capgate"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("CAPGATE_STATE_DIR", self.path("state"))
            // Share compiled guests across test runs.
            .env(
                "XDG_CACHE_HOME",
                concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-cache"),
            );
        cmd
    }

    /// `capgate keygen --out keys/NAME` for each name.
    pub fn keys(&self, names: &[&str]) {
        std::fs::create_dir_all(self.path("keys")).unwrap();
        for n in names {
            self.capgate(["keygen", "--out", &format!("keys/{n}")])
                .expect(0);
        }
    }
}

/// Flips the lowest bit of byte `i` of a file.
/// The guest exited 0 and printed `ok: WANT` (the probe's report of a call that worked).
#[track_caller]
#[allow(dead_code)]
pub fn ok(r: &Run, want: &str) {
    r.expect(0);
    assert_eq!(
        r.stdout.trim(),
        format!("ok: {want}"),
        "stderr: {}",
        r.stderr
    );
}

/// The guest exited 0 and printed an error of `kind` (the probe's report of a call that
/// failed as the guest saw it: `PermissionDenied`, `ErrorCode::...`).
#[track_caller]
#[allow(dead_code)]
pub fn err(r: &Run, kind: &str) {
    r.expect(0);
    assert!(
        r.stdout.starts_with(&format!("err: {kind}")),
        "expected a `{kind}` error, got: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
}

/// Decides `request` for `component` under `policy` and records it with `auditor`, as a
/// host's gate does: the decision returned is the one to enforce.
pub fn decide_and_record(
    auditor: &capgate::audit::Auditor,
    policy: &capgate::VerifiedPolicy,
    component: &str,
    request: &capgate::authz::Request,
) -> capgate::authz::Decision {
    auditor.record(
        policy,
        component,
        request,
        policy.authority().decide(component, request),
    )
}

pub fn flip_byte(path: &Path, i: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[i] ^= 1;
    std::fs::write(path, b).unwrap();
}

/// A TCP server on `addr` that answers each connection's first line with `pong\n`. Returns the
/// bound address; the server lives as long as the test process.
pub fn pong_server(addr: &str) -> Option<std::net::SocketAddr> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind(addr).ok()?;
    let local = listener.local_addr().ok()?;
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut buf = [0u8; 5];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"pong\n");
        }
    });
    Some(local)
}

/// A minimal HTTP/1.1 server on `addr` that answers every request with `200` and the body
/// `METHOD PATH`. Returns the bound address.
pub fn http_server(addr: &str) -> Option<std::net::SocketAddr> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind(addr).ok()?;
    let local = listener.local_addr().ok()?;
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&c);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut parts = first.split_whitespace();
                let body = format!(
                    "{} {}",
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or("")
                );
                let _ = (&c).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    Some(local)
}

/// Keys `release` (artifact role) and `alice` (policy role), a trust root, the probe guest as
/// `probe.wasm`, and `policy.yaml` with `policy`, all signed.
pub fn signed_probe_policy(sb: &Sandbox, policy: &str) {
    signed_policy(sb, &["probe"], policy);
}

/// Like [`signed_probe_policy`], with each guest of `guests` copied to `NAME.wasm`.
pub fn signed_policy(sb: &Sandbox, guests: &[&str], policy: &str) {
    sb.keys(&["release", "alice"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n",
    );
    for g in guests {
        let file = format!("{g}.wasm");
        std::fs::copy(guests::guest(g), sb.path(&file)).unwrap();
        sb.capgate(["sign", "artifact", &file, "--key", "keys/release.key"])
            .expect(0);
    }
    sb.write("policy.yaml", policy);
    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
        .expect(0);
}

/// Replaces `policy.yaml` with `policy` and signs it afresh with the `alice` key of
/// [`signed_policy`] (the old signature covered the old text).
#[allow(dead_code)]
pub fn resign_policy(sb: &Sandbox, policy: &str) {
    sb.write("policy.yaml", policy);
    let _ = std::fs::remove_file(sb.path("policy.yaml.sig"));
    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
        .expect(0);
}

/// `capgate run` of the signed policy's `component` with `args`, its audit checkpoints
/// signed by `keys/auditor.key`.
#[allow(dead_code)]
pub fn run_audited(sb: &Sandbox, component: &str, args: &[&str]) -> Run {
    Run::from(
        sb.command(run_argv(
            &["--audit-key", "keys/auditor.key"],
            component,
            args,
        ))
        .output()
        .expect("run capgate"),
    )
}

/// `run --policy policy.yaml --trust trust.yaml EXTRA --component COMPONENT -- ARGS`.
#[allow(dead_code)]
pub fn run_argv<'a>(extra: &[&'a str], component: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["run", "--policy", "policy.yaml", "--trust", "trust.yaml"];
    argv.extend_from_slice(extra);
    argv.extend_from_slice(&["--component", component, "--"]);
    argv.extend_from_slice(args);
    argv
}

/// `capgate run` of the signed policy's `component` with `args`.
pub fn run_probe(sb: &Sandbox, component: &str, args: &[&str]) -> Run {
    run_probe_env(sb, component, args, &[])
}

/// [`run_probe`] with extra environment variables set on the `capgate` process.
pub fn run_probe_env(sb: &Sandbox, component: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = sb.command(run_argv(&[], component, args));
    cmd.envs(env.iter().copied());
    Run::from(cmd.output().expect("run capgate"))
}

/// A `capgate serve` process and the address it listens on; killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
    /// The server's stderr after the listening line. Tests that make it print (each denial is
    /// reported there) must keep reading it, or the pipe fills up.
    pub stderr: Option<std::io::BufReader<std::process::ChildStderr>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `capgate ARGS` (a `serve` command listening on port 0) and waits for the line that
/// names its address.
pub fn serve(sb: &Sandbox, args: &[&str]) -> Server {
    spawn_serve(sb.command(args))
}

/// [`serve`] of a command already set up.
pub fn spawn_serve(mut cmd: Command) -> Server {
    use std::io::BufRead as _;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // The first line naming the address (warnings may come before it).
    let mut line = String::new();
    while !line.contains("http://") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("capgate serve exited before listening");
        }
    }
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Server {
        child,
        addr,
        stderr: Some(stderr),
    }
}

/// Sends one HTTP/1.1 request and returns (status, body).
pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let (status, body, complete) = request_raw(addr, method, path, body);
    assert!(complete, "the response to {method} {path} was cut off");
    (status, body)
}

/// [`request`] for responses that may be cut off: (status, the body received, whether it
/// arrived whole).
pub fn request_raw(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>, bool) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    // A connection the server cuts may end in a reset: what arrived before it counts.
    let _ = s.read_to_end(&mut raw);
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let raw_body = &raw[head_end + 4..];
    if head.contains("transfer-encoding: chunked") {
        let (body, complete) = dechunk(raw_body);
        return (status, body, complete);
    }
    let announced = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let complete = announced.is_none_or(|n| n == raw_body.len());
    (status, raw_body.to_vec(), complete)
}

/// A chunked body's data, and whether its last chunk arrived.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return (out, true);
        }
        let Some(data) = b.get(eol + 2..eol + 2 + n) else {
            out.extend_from_slice(&b[eol + 2..]);
            return (out, false);
        };
        out.extend_from_slice(data);
        b = b.get(eol + 2 + n + 2..).unwrap_or_default();
    }
}

/// The image-service demo in a sandbox: its policy at `policies/image-service/policy.yaml`,
/// both guests built and signed by `release`, keys `alice` (policy) and `auditor`, the policy
/// signed.
pub fn image_service_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    sb.write(
        "policies/image-service/policy.yaml",
        std::fs::read(root.join("policies/image-service/policy.yaml")).unwrap(),
    );
    for g in ["http-handler", "image-processor"] {
        let dst = format!("examples/image-service/build/{}.wasm", g.replace('-', "_"));
        sb.write(&dst, std::fs::read(guests::guest(g)).unwrap());
    }
    sb.keys(&["release", "alice", "auditor"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub, auditor: keys/auditor.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n  audit: { keys: [auditor], threshold: 1 }\n",
    );
    for f in [
        "examples/image-service/build/http_handler.wasm",
        "examples/image-service/build/image_processor.wasm",
    ] {
        sb.capgate(["sign", "artifact", f, "--key", "keys/release.key"])
            .expect(0);
    }
    sign_image_service_policy(&sb);
    sb
}

/// Where [`image_service_sandbox`] puts the demo policy.
pub const IMAGE_SERVICE_POLICY: &str = "policies/image-service/policy.yaml";

/// Signs the demo policy of [`image_service_sandbox`] with the policy key.
pub fn sign_image_service_policy(sb: &Sandbox) {
    sb.capgate([
        "sign",
        "policy",
        IMAGE_SERVICE_POLICY,
        "--key",
        "keys/alice.key",
    ])
    .expect(0);
}

/// `capgate serve` of the demo's `http-handler` under `policy` on a free loopback port,
/// with `extra` arguments: to adjust (environment) and start with [`spawn_serve`].
pub fn image_service_command(sb: &Sandbox, policy: &str, extra: &[&str]) -> Command {
    let mut args = vec![
        "serve",
        "--policy",
        policy,
        "--trust",
        "trust.yaml",
        "--component",
        "http-handler",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    sb.command(args)
}
