//! Talking to the registry: references, manifests, pushing and pulling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capgate_signing::{Sha256, SignatureFile};
use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use super::cache::Cache;
use super::{
    Expect, Fetched, OciError, POLICY_ARTIFACT, POLICY_LAYER, RULES_LAYER, RegistryOptions, SCHEME,
    SIGNATURE_ARTIFACT, WASM_CONFIG, WASM_LAYER,
};

pub(super) const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub(super) const TITLE: &str = "org.opencontainers.image.title";
/// The largest manifest capgate accepts from a registry.
pub(super) const MAX_SMALL: u64 = 4 * 1024 * 1024;
/// The largest signature file.
const MAX_SIGNATURE: u64 = 256 * 1024;
/// Signature artifacts read per manifest at most.
const MAX_REFERRERS: usize = 16;
/// The largest policy YAML or rules file (as the signing crate reads them).
pub(super) const MAX_POLICY: u64 = 4 * 1024 * 1024;
/// Rules files in a bundle at most.
const MAX_RULES_FILES: usize = 64;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub(super) fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An OCI image manifest (also used for artifacts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
}

/// An OCI image index (the referrers tag holds one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

pub(super) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::of(bytes))
}

/// `oci://HOST/REPO@DIGEST`.
pub(super) fn pinned(r: &Reference, digest: &str) -> String {
    format!("{SCHEME}{}/{}@{digest}", r.registry(), r.repository())
}

/// Parses an `oci://` reference. The host must be explicit (no default registry), and the
/// reference must name a tag or a `sha256:` digest.
pub(super) fn parse(text: &str) -> Result<Reference, OciError> {
    let bad = |why: &str| OciError::Reference {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    let rest = text
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad("it does not start with `oci://`"))?;
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("it names no repository"))?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(bad(
            "the part before the first `/` must be a registry host (with a dot or a port, or `localhost`)",
        ));
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    if !last.contains(':') && !last.contains('@') {
        return Err(bad("it names neither a tag nor a digest"));
    }
    let r: Reference = rest.parse().map_err(|e| bad(&format!("{e}")))?;
    if r.registry() != host {
        return Err(bad("its registry host is not where it was expected"));
    }
    if let Some(d) = r.digest() {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(
                "its digest is not `sha256:` and 64 lowercase hex digits",
            ));
        }
    }
    Ok(r)
}

fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A client for the registry of `r`, with credentials from `options`.
pub(super) fn connect(r: &Reference, options: &RegistryOptions) -> (Client, RegistryAuth) {
    // reqwest is built without a default provider; capgate's TLS uses ring. A provider
    // already installed by the host application is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = r.registry().to_owned();
    let protocol = if loopback(&host) {
        ClientProtocol::HttpsExcept(vec![host])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    let auth = match &options.basic_auth {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    (client, auth)
}

/// Maps a client error to what it means.
pub(super) fn failed(reference: &str, e: OciDistributionError) -> OciError {
    use OciDistributionError as E;
    let reference = reference.to_owned();
    let detail = e.to_string();
    let code_is = |codes: &[OciErrorCode], envelope: &oci_client::errors::OciEnvelope| {
        envelope.errors.iter().any(|x| codes.contains(&x.code))
    };
    match &e {
        E::ImageManifestNotFoundError(_) | E::ServerError { code: 404, .. } => {
            OciError::NotFound { reference, detail }
        }
        E::RegistryError { envelope, .. }
            if code_is(
                &[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::BlobUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                ],
                envelope,
            ) =>
        {
            OciError::NotFound { reference, detail }
        }
        E::RegistryError { envelope, .. }
            if code_is(
                &[OciErrorCode::Unauthorized, OciErrorCode::Denied],
                envelope,
            ) =>
        {
            OciError::Unauthorized { reference, detail }
        }
        E::RequestError(re)
            if re
                .status()
                .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
        {
            OciError::Unauthorized { reference, detail }
        }
        E::UnauthorizedError { .. }
        | E::AuthenticationFailure(_)
        | E::ServerError {
            code: 401 | 403, ..
        } => OciError::Unauthorized { reference, detail },
        E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            OciError::Digest {
                reference,
                what: "a blob".into(),
                expected: expected.clone(),
                found: actual.clone(),
            }
        }
        _ => OciError::Registry { reference, detail },
    }
}

/// A relative path with only normal components.
pub(super) fn inside(name: &str) -> Option<&Path> {
    let p = Path::new(name);
    (!name.is_empty()
        && p.is_relative()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_))))
    .then_some(p)
}

pub(super) fn io_other(what: &'static str, path: &Path, e: impl std::fmt::Display) -> OciError {
    OciError::Io {
        what,
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Which files a manifest lays out: `(file name, descriptor)`, the main file first.
pub(super) fn plan(
    reference: &str,
    manifest: &Manifest,
    expect: Expect,
) -> Result<Vec<(PathBuf, Descriptor)>, OciError> {
    let bad = |message: String| OciError::Format {
        reference: reference.to_owned(),
        message,
    };
    match expect {
        Expect::Component => {
            let wasm: Vec<_> = manifest
                .layers
                .iter()
                .filter(|l| l.media_type == WASM_LAYER)
                .collect();
            if manifest.config.media_type != WASM_CONFIG || wasm.len() != 1 {
                return Err(bad(format!(
                    "not a component: expected one `{WASM_LAYER}` layer and config `{WASM_CONFIG}` (a policy bundle? name it with `--policy`)"
                )));
            }
            if wasm[0].size > crate::policy::MAX_ARTIFACT_BYTES {
                return Err(bad(format!(
                    "the component is {} bytes, more than capgate reads",
                    wasm[0].size
                )));
            }
            Ok(vec![(PathBuf::from("component.wasm"), wasm[0].clone())])
        }
        Expect::Policy => {
            if manifest.artifact_type.as_deref() != Some(POLICY_ARTIFACT)
                || manifest.layers.first().map(|l| l.media_type.as_str()) != Some(POLICY_LAYER)
            {
                return Err(bad(format!(
                    "not a capgate policy bundle: expected artifact type `{POLICY_ARTIFACT}` with the YAML as the first layer"
                )));
            }
            if manifest.layers[0].size > MAX_POLICY {
                return Err(bad(format!(
                    "the policy YAML is {} bytes, more than capgate reads",
                    manifest.layers[0].size
                )));
            }
            if manifest.layers.len() > MAX_RULES_FILES + 1 {
                return Err(bad(format!(
                    "{} layers: a bundle holds the YAML and at most {MAX_RULES_FILES} rules files",
                    manifest.layers.len()
                )));
            }
            let mut out = vec![(PathBuf::from("policy.yaml"), manifest.layers[0].clone())];
            for l in &manifest.layers[1..] {
                let title = l.annotations.get(TITLE).map(String::as_str).unwrap_or("");
                let name = inside(title).filter(|_| l.media_type == RULES_LAYER).ok_or_else(|| {
                    bad(format!(
                        "layer {} is not a rules file with a relative path below the policy (`{title}`)",
                        l.digest
                    ))
                })?;
                if name.starts_with("policy.yaml")
                    || name.starts_with("policy.yaml.sig")
                    || out
                        .iter()
                        .any(|(o, _)| o.starts_with(name) || name.starts_with(o))
                {
                    return Err(bad(format!("a rules file may not be named `{title}`")));
                }
                if l.size > MAX_POLICY {
                    return Err(bad(format!("rules file `{title}` is {} bytes", l.size)));
                }
                out.push((name.to_owned(), l.clone()));
            }
            Ok(out)
        }
    }
}

/// Pulls the manifest `r` names, its signatures and then its files, and lays them out. With
/// `require_signature`, nothing but the manifest and the signature artifacts is downloaded
/// unless a signature over the main file is found; and of a policy bundle, only the rules
/// files that signature lists (by name and digest) are downloaded and laid out.
pub(super) async fn pull(
    r: &Reference,
    expect: Expect,
    options: &RegistryOptions,
    cache: &Cache,
    trusted: Option<super::Trusted<'_>>,
) -> Result<Fetched, OciError> {
    let text = format!("{SCHEME}{}", r.whole());
    let (client, auth) = connect(r, options);
    let accept = [MANIFEST];
    let (bytes, digest) = match client.pull_manifest_raw(r, &auth, &accept).await {
        Ok((bytes, _)) => {
            let found = digest_of(&bytes);
            if let Some(want) = r.digest()
                && want != found
            {
                return Err(OciError::Digest {
                    reference: text,
                    what: "the manifest".into(),
                    expected: want.to_owned(),
                    found,
                });
            }
            if bytes.len() as u64 > MAX_SMALL {
                return Err(OciError::Format {
                    reference: text,
                    message: "the manifest is larger than 4 MiB".into(),
                });
            }
            cache.put_blob(&found, &bytes)?;
            (bytes.to_vec(), found)
        }
        Err(e) => {
            let e = failed(&text, e);
            // A tag whose registry cannot be reached: the digest it last resolved to.
            if let (OciError::Registry { .. }, None) = (&e, r.digest())
                && let Some(d) = cache.tag(r)
            {
                let pinned_ref = r.clone_with_digest(d.clone());
                if let Some(found) = cache.laid_out(&pinned_ref, &d, expect, trusted)? {
                    eprintln!(
                        "warning: {text}: the registry cannot be reached ({e}); using {}, the digest this tag last resolved to",
                        found.pinned
                    );
                    return Ok(found);
                }
            }
            return Err(e);
        }
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| OciError::Format {
        reference: text.clone(),
        message: format!("not an OCI image manifest: {e}"),
    })?;
    let pinned_ref = r.clone_with_digest(digest.clone());
    let mut files = plan(&text, &manifest, expect)?;
    let sig = pull_signatures(&client, &pinned_ref, &digest, &files[0].1, &text).await?;
    match (&sig, trusted) {
        (None, Some(_)) => {
            return Err(OciError::NoSignature {
                reference: pinned(r, &digest),
            });
        }
        // The signatures are checked against the trust root now, over the statement they
        // sign (digest, size, files): content is downloaded only for a trusted signature.
        (Some((_, parsed)), Some(trusted)) => {
            trusted(parsed).map_err(|why| OciError::Untrusted {
                reference: pinned(r, &digest),
                why,
            })?;
        }
        _ => {}
    }
    // Only what the signature covers is laid out: a layer no signature lists is never
    // downloaded or written where the policy's relative paths could reach it.
    if let Some((_, parsed)) = &sig {
        signed_only(&mut files, parsed);
    }
    for (_, d) in &files {
        if cache.blob(&d.digest)?.is_none() {
            let b = pull_blob(&client, &pinned_ref, d, &text).await?;
            cache.put_blob(&d.digest, &b)?;
        }
    }
    let fetched = cache.lay_out(
        &pinned_ref,
        &digest,
        &files,
        sig.as_ref().map(|s| s.0.as_slice()),
    )?;
    // Only a layout whose signature was trusted is what an unreachable registry falls
    // back to.
    if r.digest().is_none() && fetched.signed && trusted.is_some() {
        cache.remember_tag(r, &digest);
    }
    Ok(fetched)
}

/// Keeps, besides the main file, only the files `sig` lists under the same name and digest.
pub(super) fn signed_only(files: &mut Vec<(PathBuf, Descriptor)>, sig: &SignatureFile) {
    let main = files.remove(0);
    files.retain(|(name, d)| {
        sig.files
            .iter()
            .any(|f| Path::new(&f.path) == name && format!("sha256:{}", f.sha256) == d.digest)
    });
    files.insert(0, main);
}

/// Pulls one blob, at most its descriptor's size, checking its digest.
async fn pull_blob(
    client: &Client,
    r: &Reference,
    d: &Descriptor,
    text: &str,
) -> Result<Vec<u8>, OciError> {
    let mut stream = client
        .pull_blob_stream(r, d.digest.as_str())
        .await
        .map_err(|e| failed(text, e))?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            // The client checks the digest at the end of the stream itself.
            let inner = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>());
            if let Some(oci_client::errors::DigestError::VerificationError { actual, .. }) = inner {
                return OciError::Digest {
                    reference: text.to_owned(),
                    what: format!("blob {}", d.digest),
                    expected: d.digest.clone(),
                    found: actual.clone(),
                };
            }
            OciError::Registry {
                reference: text.to_owned(),
                detail: e.to_string(),
            }
        })?;
        if (out.len() + chunk.len()) as u64 > d.size {
            return Err(OciError::Digest {
                reference: text.to_owned(),
                what: format!("blob {}", d.digest),
                expected: format!("{} ({} bytes)", d.digest, d.size),
                found: "more bytes than the descriptor says".into(),
            });
        }
        out.extend_from_slice(&chunk);
    }
    let found = digest_of(&out);
    if found != d.digest {
        return Err(OciError::Digest {
            reference: text.to_owned(),
            what: format!("blob {}", d.digest),
            expected: d.digest.clone(),
            found,
        });
    }
    Ok(out)
}

/// Every capgate signature file referring to `digest` whose content is `main`, merged into
/// one (each signature once), as bytes and parsed. `None` when there is none.
async fn pull_signatures(
    client: &Client,
    r: &Reference,
    digest: &str,
    main: &Descriptor,
    text: &str,
) -> Result<Option<(Vec<u8>, SignatureFile)>, OciError> {
    let index = client
        .pull_referrers(r, Some(SIGNATURE_ARTIFACT))
        .await
        .map_err(|e| failed(text, e))?;
    let mut merged: Option<SignatureFile> = None;
    for entry in index.manifests.iter().take(MAX_REFERRERS) {
        let at = r.clone_with_digest(entry.digest.clone());
        let Ok((bytes, _)) = client
            .pull_manifest_raw(&at, &RegistryAuth::Anonymous, &[MANIFEST])
            .await
        else {
            continue;
        };
        if digest_of(&bytes) != entry.digest || bytes.len() as u64 > MAX_SMALL {
            continue;
        }
        let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        if m.subject.as_ref().map(|s| s.digest.as_str()) != Some(digest) {
            continue;
        }
        // One signature file per signature artifact.
        for l in m
            .layers
            .iter()
            .filter(|l| l.media_type == SIGNATURE_ARTIFACT && l.size <= MAX_SIGNATURE)
            .take(1)
        {
            let Ok(raw) = pull_blob(client, r, l, text).await else {
                continue;
            };
            let Ok(sf) = SignatureFile::parse(Path::new("signature"), &raw) else {
                continue;
            };
            if format!("sha256:{}", sf.sha256) != main.digest {
                continue;
            }
            match &mut merged {
                None => merged = Some(sf),
                Some(into) if into.files == sf.files && into.payload_type == sf.payload_type => {
                    for s in sf.signatures {
                        if !into.signatures.contains(&s) {
                            into.signatures.push(s);
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }
    merged
        .map(|sf| serde_json::to_vec_pretty(&sf).map(|b| (b, sf)))
        .transpose()
        .map_err(|e| io_other("signature", Path::new(text), e))
}
