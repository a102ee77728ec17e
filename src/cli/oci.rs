//! `capgate push`, and `oci://` references where the CLI takes a file.

use std::borrow::Cow;
use std::path::Path;

use capgate::oci::{self, Expect, OciError, RegistryOptions};
use capgate::signing::{PayloadKind, Role, SignatureFile, TrustRoot};
use serde_json::json;

use super::{CliError, Kind, Report};

impl From<OciError> for CliError {
    fn from(e: OciError) -> Self {
        Self::new(super::exit::fetch_exit(e.class()), e.to_string())
    }
}

/// `capgate push KIND FILE oci://HOST/REPO:TAG`.
pub(super) fn push(kind: Kind, file: &Path, target: &str) -> Result<Report, CliError> {
    let options = RegistryOptions::from_env();
    let pushed = match kind {
        Kind::Artifact => oci::push_artifact(file, target, &options)?,
        Kind::Policy => oci::push_policy(file, target, &options)?,
    };
    Ok(Report::new(
        format!(
            "pushed {} to {} ({}), with its signature file ({} signature{})",
            file.display(),
            pushed.tagged,
            pushed.pinned,
            pushed.signatures,
            if pushed.signatures == 1 { "" } else { "s" }
        ),
        json!({ "ok": true, "file": file, "tag": pushed.tagged, "pinned": pushed.pinned, "signatures": pushed.signatures }),
    ))
}

/// `path` itself, or for an `oci://` reference the file it was pulled to (with `announce`,
/// the digest a tag resolved to is said on stderr). With `trust`, nothing but the manifest
/// and its signatures is downloaded unless a signature meets the trust root's role for
/// `expect` (`policy` or `artifact`).
pub(super) fn local<'a>(
    path: &'a Path,
    expect: Expect,
    trust: Option<&TrustRoot>,
    announce: bool,
) -> Result<Cow<'a, Path>, CliError> {
    let Some(text) = path.to_str().filter(|t| oci::is_reference(t)) else {
        return Ok(Cow::Borrowed(path));
    };
    let (role, kind) = match expect {
        Expect::Policy => (Role::Policy, PayloadKind::Policy),
        _ => (Role::Artifact, PayloadKind::Artifact),
    };
    let req = trust.map(|t| t.role(role));
    let check = |sf: &SignatureFile| match (trust, &req) {
        (Some(t), Some(req)) => oci::meets(t, req, kind, text, sf),
        _ => Ok(()),
    };
    let trusted: Option<oci::Trusted<'_>> = trust.map(|_| &check as _);
    let got = oci::fetch(text, expect, &RegistryOptions::from_env(), trusted)?;
    if announce && got.pinned != text {
        eprintln!("note: {text} is {}", got.pinned);
    }
    Ok(Cow::Owned(got.path))
}
