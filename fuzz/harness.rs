//! What each fuzz target does with one input. Shared by the fuzz targets (`fuzz_targets/`) and
//! by `tests/fuzz_regressions.rs`, which replays every input that ever crashed one of them.
//!
//! Each function must return normally for every input: an error is a correct answer, a panic
//! (or a sanitizer report) is a finding.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::OnceLock;

/// A scratch directory for targets that read files, created once per process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("capgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(d.join("static")).expect("scratch dir");
        std::fs::write(d.join("app.wasm"), b"\0asm\x0d\0\x01\0").expect("artifact");
        let key = capgate::signing::SecretKey::generate();
        std::fs::write(d.join("k.pub"), key.public().to_pem()).expect("key");
        d
    })
}

/// Policy YAML, loaded as `capgate run --allow-unsigned` would load it.
pub fn policy_yaml(data: &[u8]) {
    let dir = scratch();
    let path = dir.join("policy.yaml");
    if std::fs::write(&path, data).is_ok() {
        let _ = capgate::danger::load_unsigned_policy(&path);
    }
}

/// A Cedar rules file, referenced by an otherwise valid policy.
pub fn cedar_rules(data: &[u8]) {
    let dir = scratch();
    let path = dir.join("rules-policy.yaml");
    let policy = "capgate: 1\nname: fuzz\nversion: 1\nrules: [rules.cedar]\ncomponents:\n  app:\n    component: app.wasm\n    files: [{ host: static, guest: /static }]\n    network: { connect: [tcp://10.0.0.0/8:5432], lookup: [db.internal] }\n    http: [https://api.example.com/v1/]\n";
    if std::fs::write(&path, policy).is_err()
        || std::fs::write(dir.join("rules.cedar"), data).is_err()
    {
        return;
    }
    if let Ok(p) = capgate::danger::load_unsigned_policy(&path) {
        // Rules that load must also decide without panicking.
        use capgate::authz::{Action, Request};
        for r in [
            Request::Socket {
                action: Action::NetConnect,
                addr: "10.1.2.3:5432".parse().expect("an address"),
            },
            Request::Lookup {
                name: "db.internal".into(),
            },
            Request::File {
                write: true,
                path: "/static/a".into(),
            },
        ] {
            let _ = p.authority().decide("app", &r);
        }
    }
}

/// A trust root's YAML (key files resolve in the scratch directory, where `k.pub` exists).
pub fn trust_root(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let dir = scratch();
        let _ = capgate::signing::TrustRoot::from_yaml(&dir.join("trust.yaml"), dir, text);
    }
}

/// A detached signature file.
pub fn signature_file(data: &[u8]) {
    let _ = capgate::signing::SignatureFile::parse(Path::new("x.sig"), data);
}

/// An audit log: read, verified (chain only) and each decision's request rebuilt.
pub fn audit_log(data: &[u8]) {
    use capgate::audit::{LineKind, LogReader};
    let lines = || LogReader::from_reader(Path::new("log"), std::io::Cursor::new(data.to_vec()));
    let _ = capgate::audit::verify_lines(lines(), None, false);
    for l in lines().flatten() {
        if let LineKind::Decision(r) = l.kind {
            let _ = r.request();
        }
    }
}

/// Socket, name and URL patterns: parse, and whatever parses must print as text that parses
/// back to the same pattern.
pub fn patterns(data: &[u8]) {
    use capgate::policy::pattern::{NamePattern, SocketPattern, UrlPattern};
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = SocketPattern::from_str(s) {
        let back =
            SocketPattern::from_str(&p.to_string()).expect("a printed socket pattern parses");
        assert_eq!(back, p, "socket pattern `{s}` printed as `{p}`");
    }
    if let Ok(p) = NamePattern::from_str(s) {
        let back = NamePattern::from_str(&p.to_string()).expect("a printed name pattern parses");
        assert_eq!(back, p, "name pattern `{s}` printed as `{p}`");
    }
    if let Ok(p) = UrlPattern::from_str(s) {
        let back = UrlPattern::from_str(&p.to_string()).expect("a printed URL pattern parses");
        assert_eq!(back, p, "URL pattern `{s}` printed as `{p}`");
    }
}

/// Component bytes through `capgate inspect`.
#[cfg(feature = "runtime")]
pub fn inspect(data: &[u8]) {
    let _ = capgate::inspect::inspect(data, None);
}
