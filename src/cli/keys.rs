//! `keygen`, `sign` and `verify`: thin wrappers over `capgate-signing`.

use std::path::Path;

use capgate_signing::{
    OnStale, PolicyVerifier, Provenance, Role, SecretKey, TrustRoot, sig_path, sign_artifact_with,
    sign_policy_with, verify_artifact_file,
};
use serde_json::json;

use super::{CliError, Kind, Report, TrustArgs};

pub(super) fn keygen(out: &Path, force: bool) -> Result<Report, CliError> {
    let key = SecretKey::generate();
    key.save_pair(out, force)?;
    let id = key.public().id();
    Ok(Report::new(
        format!(
            "wrote {0}.key (private, mode 0600) and {0}.pub\nkey id: {id}",
            out.display()
        ),
        json!({ "private": format!("{}.key", out.display()), "public": format!("{}.pub", out.display()), "keyid": id }),
    ))
}

pub(super) fn sign(kind: Kind, file: &Path, key: &Path, replace: bool) -> Result<Report, CliError> {
    let key = SecretKey::load(key)?;
    let on_stale = if replace {
        OnStale::Replace
    } else {
        OnStale::Refuse
    };
    let signed = match kind {
        Kind::Artifact => sign_artifact_with(file, &key, on_stale)?,
        Kind::Policy => sign_policy_with(file, &key, on_stale)?,
    };
    let sf = &signed.file;
    let sig = sig_path(file);
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let discarded = match signed.discarded {
        0 => String::new(),
        n => format!(
            "\ndiscarded {n} signature{} over the old content; co-signers must sign again",
            plural(n)
        ),
    };
    Ok(Report::new(
        format!(
            "signed {} (sha256 {}) with key {}\n{} holds {} signature{}{discarded}",
            file.display(),
            sf.sha256,
            key.public().id(),
            sig.display(),
            sf.signatures.len(),
            plural(sf.signatures.len())
        ),
        json!({ "file": file, "sha256": sf.sha256, "keyid": key.public().id(), "signature_file": sig, "signatures": sf.signatures.len(), "discarded": signed.discarded }),
    ))
}

pub(super) fn verify(kind: Kind, file: &Path, args: &TrustArgs) -> Result<Report, CliError> {
    let trust = TrustRoot::load(&args.trust)?;
    #[cfg(feature = "oci")]
    let file = &*super::oci::local(
        file,
        match kind {
            Kind::Artifact => capgate::oci::Expect::Component,
            Kind::Policy => capgate::oci::Expect::Policy,
        },
        Some(&trust),
        true,
    )?;
    match kind {
        Kind::Artifact => {
            let r = verify_artifact_file(file, &trust, &trust.role(Role::Artifact))?;
            Ok(Report::new(
                format!(
                    "ok: {} (sha256 {}, {} bytes) signed by {}",
                    file.display(),
                    r.sha256,
                    r.size,
                    r.signers.join(", ")
                ),
                json!({ "ok": true, "file": file, "sha256": r.sha256, "size": r.size, "signers": r.signers }),
            ))
        }
        Kind::Policy => {
            let state = args.state()?;
            let bundle = PolicyVerifier::new(&trust, &state).verify(file)?;
            let h = bundle.header();
            let signers = match bundle.provenance() {
                Provenance::Signed { signers } => signers.clone(),
                _ => Vec::new(),
            };
            Ok(Report::new(
                format!(
                    "ok: policy `{}` version {} ({}, sha256 {}) signed by {}; covers {} rules file{}",
                    h.name,
                    h.version,
                    file.display(),
                    bundle.sha256(),
                    signers.join(", "),
                    h.rules.len(),
                    if h.rules.len() == 1 { "" } else { "s" }
                ),
                json!({ "ok": true, "file": file, "name": h.name, "version": h.version, "sha256": bundle.sha256(), "signers": signers, "rules": h.rules }),
            ))
        }
    }
}
