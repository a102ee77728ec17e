//! Property tests: any single-byte change to signed content, or to a signature, is detected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capgate_signing::{PayloadKind, Role, SecretKey, TrustRoot, VerifiedArtifact, sign_artifact};
use proptest::prelude::*;

struct Fixture {
    dir: tempfile::TempDir,
    trust: TrustRoot,
}

fn fixture(payload: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    key.save_pair(&dir.path().join("release"), false).unwrap();
    std::fs::write(
        dir.path().join("trust.yaml"),
        "capgate-trust: 1\nkeys: { release: release.pub }\nroles: { artifact: { keys: [release], threshold: 1 } }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("a.wasm"), payload).unwrap();
    sign_artifact(&dir.path().join("a.wasm"), &key).unwrap();
    let trust = TrustRoot::load(&dir.path().join("trust.yaml")).unwrap();
    Fixture { dir, trust }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_single_byte_change_to_the_payload_is_refused(
        payload in proptest::collection::vec(any::<u8>(), 1..2048),
        at in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let f = fixture(&payload);
        let path = f.dir.path().join("a.wasm");
        let req = f.trust.role(Role::Artifact);
        // Positive control: the signed bytes verify.
        prop_assert!(VerifiedArtifact::verify(&path, payload.clone(), &f.trust, &req).is_ok());
        let mut changed = payload.clone();
        changed[at.index(payload.len())] ^= xor;
        prop_assert!(VerifiedArtifact::verify(&path, changed, &f.trust, &req).is_err());
    }

    #[test]
    fn any_single_byte_change_to_the_signed_message_breaks_the_signature(
        at in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let f = fixture(b"payload");
        let sig = capgate_signing::SignatureFile::load(&f.dir.path().join("a.wasm.sig")).unwrap();
        let req = f.trust.role(Role::Artifact);
        let path = f.dir.path().join("a.wasm");
        let mut msg = sig.signed_message(PayloadKind::Artifact);
        prop_assert!(f.trust.check(&path, &req, &msg, &sig).is_ok());
        let i = at.index(msg.len());
        msg[i] ^= xor;
        prop_assert!(f.trust.check(&path, &req, &msg, &sig).is_err());
    }
}
