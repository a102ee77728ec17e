//! Pushing: blobs, the manifest under its tag, and the signature file as a referrer.

use std::path::Path;

use capgate_signing::{Sha256, SignatureFile};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::registry::{
    Descriptor, EMPTY, INDEX, Index, MANIFEST, MAX_POLICY, MAX_SMALL, Manifest, TITLE, connect,
    digest_of, failed, inside, io_other, parse, pinned,
};
use super::{
    OciError, POLICY_ARTIFACT, POLICY_LAYER, RULES_LAYER, RegistryOptions, SIGNATURE_ARTIFACT,
    WASM_CONFIG, WASM_LAYER,
};

/// Where something was pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The reference by digest: `oci://HOST/REPO@sha256:HEX`.
    pub pinned: String,
    /// The tag it was pushed under.
    pub tagged: String,
    /// How many signatures the pushed signature file holds.
    pub signatures: usize,
}

/// Pushes a component `file` and its signature file `file.sig` to `target` (a tag).
pub fn push_artifact(
    file: &Path,
    target: &str,
    options: &RegistryOptions,
) -> Result<Pushed, OciError> {
    let bytes = capgate_signing::read_regular(file, crate::policy::MAX_ARTIFACT_BYTES)?;
    let sig = signature_for(file, &bytes)?;
    let layer = Descriptor::of(WASM_LAYER, &bytes);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer.digest],
    }))
    .map_err(|e| io_other("component config", file, e))?;
    let blobs = vec![
        (layer.clone(), bytes),
        (Descriptor::of(WASM_CONFIG, &config), config),
    ];
    push(target, None, blobs, sig, options)
}

/// Pushes the policy bundle at `file` (the YAML, every rules file its signature covers, and
/// `file.sig`) to `target` (a tag).
pub fn push_policy(
    file: &Path,
    target: &str,
    options: &RegistryOptions,
) -> Result<Pushed, OciError> {
    let yaml = capgate_signing::read_regular(file, MAX_POLICY)?;
    let sig = signature_for(file, &yaml)?;
    let parsed = SignatureFile::parse(&capgate_signing::sig_path(file), &sig.1)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut blobs = vec![(Descriptor::of(POLICY_LAYER, &yaml), yaml)];
    for f in &parsed.files {
        let name = inside(&f.path).ok_or_else(|| OciError::Format {
            reference: target.to_owned(),
            message: format!(
                "rules file `{}` is outside the policy's directory; a pushed bundle holds only files below it",
                f.path
            ),
        })?;
        let bytes = capgate_signing::read_regular(&dir.join(name), MAX_POLICY)?;
        let mut d = Descriptor::of(RULES_LAYER, &bytes);
        d.annotations.insert(TITLE.into(), f.path.clone());
        blobs.push((d, bytes));
    }
    push(target, Some(POLICY_ARTIFACT), blobs, sig, options)
}

/// `file.sig`, which must cover `bytes`, and how many signatures it holds.
fn signature_for(file: &Path, bytes: &[u8]) -> Result<(usize, Vec<u8>), OciError> {
    let path = capgate_signing::sig_path(file);
    let raw = capgate_signing::read_regular(&path, MAX_SMALL)?;
    let parsed = SignatureFile::parse(&path, &raw)?;
    if parsed.sha256 != Sha256::of(bytes) {
        return Err(OciError::Format {
            reference: file.display().to_string(),
            message: format!(
                "`{}` signs other content than the file (hint: sign the file again)",
                path.display()
            ),
        });
    }
    Ok((parsed.signatures.len(), raw))
}

/// Pushes `blobs` (the first `blobs.len() - 1` as layers for a policy, all but the config
/// for a component), the manifest under `target`'s tag, then the signature as a referrer.
fn push(
    target: &str,
    artifact_type: Option<&str>,
    mut blobs: Vec<(Descriptor, Vec<u8>)>,
    sig: (usize, Vec<u8>),
    options: &RegistryOptions,
) -> Result<Pushed, OciError> {
    let r = parse(target)?;
    if r.digest().is_some() {
        return Err(OciError::Reference {
            text: target.to_owned(),
            why: "push to a tag, not a digest (the digest is what the push makes)".into(),
        });
    };
    let empty = b"{}".to_vec();
    let config = match artifact_type {
        // A component's config is the last blob; a policy bundle's is the empty descriptor.
        None => blobs.pop(),
        Some(_) => Some((Descriptor::of(EMPTY, &empty), empty.clone())),
    };
    let Some(config) = config else {
        return Err(OciError::Format {
            reference: target.to_owned(),
            message: "nothing to push".into(),
        });
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST.into()),
        artifact_type: artifact_type.map(str::to_owned),
        config: config.0.clone(),
        layers: blobs.iter().map(|(d, _)| d.clone()).collect(),
        subject: None,
    };
    let manifest =
        serde_json::to_vec(&manifest).map_err(|e| io_other("manifest", Path::new(target), e))?;
    let digest = digest_of(&manifest);
    let options = options.clone();
    let out = Pushed {
        pinned: pinned(&r, &digest),
        tagged: target.to_owned(),
        signatures: sig.0,
    };
    super::block(target, async move {
        let (client, auth) = connect(&r, &options);
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let fail = |e| failed(target, e);
        blobs.push(config);
        for (d, bytes) in blobs {
            if !client.blob_exists(&r, &d.digest).await.map_err(fail)? {
                client.push_blob(&r, bytes, &d.digest).await.map_err(fail)?;
            }
        }
        // By digest first, then its signature, and only then under the tag: a host polling
        // the tag never sees the new manifest before its signature.
        let ct = || http::HeaderValue::from_static(MANIFEST);
        let by_digest = r.clone_with_digest(digest_of(&manifest));
        client
            .push_manifest_raw(&by_digest, manifest.clone(), ct())
            .await
            .map_err(fail)?;
        let subject = Descriptor::of(MANIFEST, &manifest);
        push_signature(&client, &r, subject, sig.1)
            .await
            .map_err(fail)?;
        client
            .push_manifest_raw(&r, manifest, ct())
            .await
            .map(drop)
            .map_err(fail)
    })??;
    Ok(out)
}

/// Pushes `sig` as an artifact whose subject is `subject`, and adds it to the referrers tag
/// (`sha256-HEX`) for registries without the referrers API. The tag is kept on registries
/// with the API too: it is harmless there and one code path serves both.
async fn push_signature(
    client: &Client,
    r: &Reference,
    subject: Descriptor,
    sig: Vec<u8>,
) -> Result<(), OciDistributionError> {
    let empty = b"{}".to_vec();
    let layer = Descriptor::of(SIGNATURE_ARTIFACT, &sig);
    let config = Descriptor::of(EMPTY, &empty);
    for (d, bytes) in [(&layer, sig), (&config, empty)] {
        if !client.blob_exists(r, &d.digest).await? {
            client.push_blob(r, bytes, &d.digest).await?;
        }
    }
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST.into()),
        artifact_type: Some(SIGNATURE_ARTIFACT.into()),
        config,
        layers: vec![layer],
        subject: Some(subject.clone()),
    })?;
    let mut entry = Descriptor::of(MANIFEST, &manifest);
    entry.artifact_type = Some(SIGNATURE_ARTIFACT.into());
    let by_digest = r.clone_with_digest(entry.digest.clone());
    let ct = http::HeaderValue::from_static(MANIFEST);
    client.push_manifest_raw(&by_digest, manifest, ct).await?;

    let tag = subject.digest.replace(':', "-");
    let tagged = Reference::with_tag(r.registry().into(), r.repository().into(), tag);
    let mut index = match client
        .pull_manifest_raw(&tagged, &RegistryAuth::Anonymous, &[INDEX])
        .await
    {
        Ok((bytes, _)) => serde_json::from_slice::<Index>(&bytes).unwrap_or(Index {
            schema_version: 2,
            media_type: Some(INDEX.into()),
            manifests: Vec::new(),
        }),
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(INDEX.into()),
            manifests: Vec::new(),
        },
    };
    if !index.manifests.iter().any(|m| m.digest == entry.digest) {
        index.manifests.push(entry);
        let ct = http::HeaderValue::from_static(INDEX);
        client
            .push_manifest_raw(&tagged, serde_json::to_vec(&index)?, ct)
            .await?;
    }
    Ok(())
}
