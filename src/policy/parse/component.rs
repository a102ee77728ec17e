//! One component's entry: its identity (name, artifact, pin, signers), environment and
//! stdio, with its grants and limits parsed by [`super::grants`] and [`super::limits`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::{Ctx, RawComponent, grants, is_ident, limits};
use crate::policy::error::PolicyError;
use crate::policy::model::{ComponentPolicy, Origin, Stdio};

/// Parses component `name`'s entry. `names` are every component of the policy (for `calls`).
pub(super) fn component(
    cx: &Ctx<'_>,
    dir: &Path,
    name: &str,
    spanned: &Spanned<RawComponent>,
    names: &BTreeSet<&str>,
) -> Result<ComponentPolicy, PolicyError> {
    let at = &spanned.referenced;
    let rc = &spanned.value;
    if !is_ident(name) {
        return Err(cx.err(
            at,
            format!("component name `{name}` is not valid: expected `[a-z][a-z0-9-]*`"),
            None,
        ));
    }
    // Checked to exist when the policy is loaded; parsing reads no file.
    let source = crate::policy::parse::oci_reference(&rc.component.value);
    let artifact = match &source {
        Some(_) => PathBuf::new(),
        None => dir.join(&rc.component.value),
    };
    let sha256 = match &rc.sha256 {
        None => None,
        Some(s) => Some(s.value.parse().map_err(|e| {
            cx.err(
                &s.referenced,
                format!("{name}.sha256: {e}"),
                Some("`sha256sum FILE` prints it".into()),
            )
        })?),
    };

    let files = grants::files(cx, dir, name, rc)?;
    let cwd = grants::cwd(cx, name, rc.cwd.as_ref(), &files)?;
    let mut env = Vec::new();
    for (k, v) in &rc.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(cx.err(
                &v.referenced,
                format!("{name}.env: `{k}` is not a variable name"),
                None,
            ));
        }
        env.push((k.clone(), v.value.clone()));
    }
    let mut env_from_host = Vec::new();
    for k in &rc.env_from_host {
        if k.value.is_empty() || k.value.contains(['=', '\0']) {
            return Err(cx.err(
                &k.referenced,
                format!("{name}.env_from_host: `{}` is not a variable name", k.value),
                None,
            ));
        }
        if rc.env.contains_key(&k.value) {
            return Err(cx.err(
                &k.referenced,
                format!("{name}: `{}` is in both `env` and `env_from_host`", k.value),
                Some("keep one".into()),
            ));
        }
        env_from_host.push(k.value.clone());
    }

    let network = grants::network(cx, name, rc)?;
    let http = grants::http(cx, name, rc)?;
    let calls = grants::calls(cx, name, &rc.calls, names)?;
    let limits = limits::limits(cx, name, &rc.limits)?;

    Ok(ComponentPolicy {
        name: name.to_owned(),
        artifact,
        source,
        artifact_at: Origin::of(&rc.component.referenced),
        sha256,
        signed_by: rc.signed_by.iter().map(|s| s.value.clone()).collect(),
        files,
        cwd,
        env,
        env_from_host,
        args: rc.args.clone(),
        stdio: Stdio {
            stdin: rc.stdio.stdin,
            stdout: rc.stdio.stdout,
            stderr: rc.stdio.stderr,
        },
        network,
        http,
        calls,
        limits,
        reusable: rc.reusable,
    })
}
