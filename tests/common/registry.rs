//! A real OCI registry for tests: CNCF Distribution (`docker-registry`, the distribution's
//! package; `.ci/run` installs it), started on a free loopback port with its storage in a
//! temporary directory, and stopped when dropped.
#![allow(unreachable_pub, dead_code)]

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A user name and password the registry accepts when started with [`Registry::with_auth`].
pub const USER: &str = "capgate";
pub const PASSWORD: &str = "s3cret-test-only";
/// `PASSWORD` hashed with bcrypt (cost 5), as Distribution's htpasswd file wants it.
const HTPASSWD: &str = "capgate:$2b$05$iwK7qPl5Y4wNBzjmSwqP6.wIAqALjaOdZigKhdzf2V.uX40v1.FWW\n";

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// A registry without authentication.
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// A registry that requires HTTP basic authentication as [`USER`].
    pub fn with_auth() -> Self {
        Self::spawn(true)
    }

    fn spawn(auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog: {{ level: error, accesslog: {{ disabled: true }} }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp: {{ addr: \"{host}\" }}\n",
            dir.path().join("data").display()
        );
        if auth {
            std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd: {{ realm: capgate-test, path: {} }}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let file = dir.path().join("config.yml");
        std::fs::write(&file, config).unwrap();
        let program =
            std::env::var("CAPGATE_TEST_REGISTRY").unwrap_or_else(|_| "docker-registry".into());
        let child = Command::new(&program)
            .arg("serve")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{program}` ({e}): install CNCF Distribution (`apt-get install docker-registry`; `.ci/run` does)")
            });
        let reg = Self { child, host, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((status, _, _)) = reg.try_http("GET", "/v2/", &[], b"")
                && (status == 200 || status == 401)
            {
                return reg;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not start on {}",
                reg.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `oci://HOST/PATH`.
    pub fn oci(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host)
    }

    /// The file in the registry's storage that holds blob `sha256:HEX`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// One HTTP/1.1 request: (status, response head, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        self.try_http(method, path, headers, body).unwrap()
    }

    fn try_http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, Vec<u8>)> {
        let mut s = std::net::TcpStream::connect(&self.host)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no response head"))?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        Ok((status, head, raw[end + 4..].to_vec()))
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic upload) and returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", capgate::signing::Sha256::of(bytes));
        let (status, head, _) = self.http("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
        assert_eq!(status, 202, "{head}");
        let location = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Location: ")
                    .or_else(|| l.strip_prefix("location: "))
            })
            .unwrap()
            .trim()
            .to_owned();
        let location = location
            .split_once(&self.host)
            .map_or(location.as_str(), |(_, p)| p)
            .to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let (status, head, _) = self.http(
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &[("content-type", "application/octet-stream")],
            bytes,
        );
        assert_eq!(status, 201, "{head}");
        digest
    }

    /// Puts `manifest` (an OCI image manifest) under `reference` (a tag or digest) of `repo`.
    pub fn put_manifest(&self, repo: &str, reference: &str, manifest: &[u8], media_type: &str) {
        let (status, head, body) = self.http(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            manifest,
        );
        assert_eq!(status, 201, "{head}\n{}", String::from_utf8_lossy(&body));
    }

    /// The OCI image manifest under `reference` (a tag or digest) of `repo`.
    pub fn manifest(&self, repo: &str, reference: &str) -> Vec<u8> {
        let (status, head, body) = self.http(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", "application/vnd.oci.image.manifest.v1+json")],
            b"",
        );
        assert_eq!(status, 200, "{head}");
        body
    }

    /// Withholds the signatures of manifest `digest` of `repo`: deletes its referrers index
    /// (this registry has no referrers API, so that index is how signatures are found).
    pub fn withhold_signatures(&self, repo: &str, digest: &str) {
        let (status, head, index) = self.http(
            "GET",
            &format!("/v2/{repo}/manifests/{}", digest.replace(':', "-")),
            &[("accept", "application/vnd.oci.image.index.v1+json")],
            b"",
        );
        assert_eq!(status, 200, "{head}");
        let index = format!("sha256:{}", capgate::signing::Sha256::of(&index));
        let (status, head, _) =
            self.http("DELETE", &format!("/v2/{repo}/manifests/{index}"), &[], b"");
        assert_eq!(status, 202, "{head}");
    }
}
