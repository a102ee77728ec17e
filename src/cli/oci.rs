//! `capgate push`, and `oci://` references where the CLI takes a file.

use std::borrow::Cow;
use std::path::Path;

use capgate::oci::{self, Expect, OciError, RegistryOptions};
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

/// `path` itself, or for an `oci://` reference the file it was pulled to (announced on
/// stderr with the digest it resolved to). With `signed`, a pull without a signature is
/// refused here, with the reference in the message.
pub(super) fn local<'a>(
    path: &'a Path,
    expect: Expect,
    signed: bool,
    announce: bool,
) -> Result<Cow<'a, Path>, CliError> {
    let Some(text) = path.to_str().filter(|t| oci::is_reference(t)) else {
        return Ok(Cow::Borrowed(path));
    };
    let got = oci::fetch(text, expect, &RegistryOptions::from_env(), signed)?;
    if signed && !got.signed {
        return Err(OciError::NoSignature {
            reference: got.pinned,
        }
        .into());
    }
    if announce && got.pinned != text {
        eprintln!("note: {text} is {}", got.pinned);
    }
    Ok(Cow::Owned(got.path))
}
