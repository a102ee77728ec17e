//! The image-service demo end to end: the policy in `policies/image-service/`, the two guest
//! components signed, `capgate serve` on loopback, and a real HTTP client. The output PNG is
//! decoded and each pixel compared with the filter computed here, independently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::process::Command;

use common::{
    IMAGE_SERVICE_POLICY, Sandbox, Server, image_service_command, image_service_sandbox as sandbox,
    request, sign_image_service_policy as sign_policy, spawn_serve,
};

fn start(sb: &Sandbox, extra: &[&str]) -> Server {
    spawn_serve(image_service_command(sb, IMAGE_SERVICE_POLICY, extra))
}

/// A W×H RGB test image with a gradient in every channel.
fn test_png(w: u32, h: u32) -> (Vec<u8>, Vec<[u8; 3]>) {
    let pixels: Vec<[u8; 3]> = (0..w * h)
        .map(|i| {
            [
                (i * 37 % 256) as u8,
                (i * 91 % 256) as u8,
                (255 - i * 13 % 256) as u8,
            ]
        })
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&pixels.concat()).unwrap();
    wr.finish().unwrap();
    (out, pixels)
}

fn decode_rgba(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(bytes).read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// The filters as the interface documents them.
fn expected(filter: &str, [r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (u32::from(r), u32::from(g), u32::from(b));
    match filter {
        "grayscale" => {
            let y = ((299 * r + 587 * g + 114 * b) / 1000) as u8;
            [y, y, y]
        }
        "sepia" => [
            ((393 * r + 769 * g + 189 * b) / 1000).min(255) as u8,
            ((349 * r + 686 * g + 168 * b) / 1000).min(255) as u8,
            ((272 * r + 534 * g + 131 * b) / 1000).min(255) as u8,
        ],
        "invert" => [255 - r as u8, 255 - g as u8, 255 - b as u8],
        other => panic!("{other}"),
    }
}

#[test]
fn the_image_service_filters_real_pngs_through_capgate_serve() {
    let sb = sandbox();
    let mut server = start(&sb, &[]);
    let (png_in, pixels) = test_png(7, 5);

    let (status, body) = request(&server.addr, "POST", "/dimensions", &png_in);
    assert_eq!(
        (status, String::from_utf8_lossy(&body).trim()),
        (200, "{\"width\":7,\"height\":5}")
    );

    for filter in ["grayscale", "sepia", "invert"] {
        let (status, body) = request(
            &server.addr,
            "POST",
            &format!("/filter?type={filter}"),
            &png_in,
        );
        assert_eq!(status, 200, "{filter}: {}", String::from_utf8_lossy(&body));
        let (w, h, rgba) = decode_rgba(&body);
        assert_eq!((w, h), (7, 5));
        for (i, px) in rgba.chunks(4).enumerate() {
            assert_eq!(
                &px[..3],
                &expected(filter, pixels[i]),
                "{filter}: pixel {i}"
            );
            assert_eq!(px[3], 255, "{filter}: alpha of pixel {i}");
        }
    }

    // Bad input is the handler's 400, not a crash.
    let (status, body) = request(&server.addr, "POST", "/filter?type=invert", b"not a png");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // A call the policy does not grant refuses the request with a bare 403; the reason goes
    // to the operator (stderr, below), never to the client. The server goes on serving.
    let (status, body) = request(&server.addr, "GET", "/admin", b"");
    assert_eq!(status, 403);
    assert_eq!(String::from_utf8_lossy(&body), "forbidden\n");
    let (status, _) = request(&server.addr, "POST", "/dimensions", &png_in);
    assert_eq!(status, 200);

    // Ctrl-C: a graceful stop with exit status 0.
    assert!(
        Command::new("kill")
            .args(["-INT", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    let mut rest = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{rest}");
    assert!(rest.contains("capgate: denied `http-handler` call image-processor/example:image/image-processor@0.1.0#admin-stats"), "{rest}");
    assert!(rest.contains("capgate: request to `http-handler` answered 403: call from `http-handler` to `image-processor` example:image/image-processor@0.1.0#admin-stats denied"), "{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(rest.trim_end().ends_with("capgate: stopped"), "{rest}");
}

#[test]
fn serving_a_component_that_is_not_a_handler_is_refused() {
    let sb = sandbox();
    let r = sb.capgate([
        "serve",
        "--policy",
        "policies/image-service/policy.yaml",
        "--trust",
        "trust.yaml",
        "--component",
        "image-processor",
        "--listen",
        "127.0.0.1:0",
    ]);
    r.expect(65)
        .stderr_has("it cannot serve HTTP (it must export `wasi:http/incoming-handler`)");
}

/// The resident memory of a process, from `/proc/PID/status`, in KiB.
/// Grants `admin-stats` (which counts the images an instance of the processor has filtered),
/// marks the processor `reusable` or not, and signs the policy again.
fn count_filtered(sb: &Sandbox, reusable: bool) {
    let path = "policies/image-service/policy.yaml";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy = std::fs::read_to_string(root.join(path))
        .unwrap()
        .replace(
            "functions: [apply-filter, get-dimensions]",
            "functions: [apply-filter, get-dimensions, admin-stats]",
        )
        .replace(
            "limits: { memory: 128MiB, timeout: 10s }",
            &format!("limits: {{ memory: 128MiB, timeout: 10s }}\n    reusable: {reusable}"),
        )
        .replace(
            "version: 1",
            &format!("version: {}", 1 + u8::from(reusable)),
        );
    assert!(policy.contains("admin-stats") && policy.contains("reusable"));
    std::fs::remove_file(sb.path(&format!("{path}.sig"))).unwrap();
    sb.write(path, policy);
    sign_policy(sb);
}

#[test]
fn a_linked_callee_keeps_nothing_of_one_request_for_the_next_unless_reusable() {
    let sb = sandbox();
    let (png_in, _) = test_png(3, 2);
    let filter_then_stats = |server: &Server| {
        for _ in 0..2 {
            let (status, _) = request(&server.addr, "POST", "/filter?type=invert", &png_in);
            assert_eq!(status, 200);
        }
        let (status, body) = request(&server.addr, "GET", "/admin", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body).into_owned()
    };

    // By default each request's calls reach an instance of its own, dropped at its end.
    count_filtered(&sb, false);
    let server = start(&sb, &[]);
    assert_eq!(filter_then_stats(&server), "processed 0 images");
    drop(server);

    // Control: a processor declared reusable keeps one instance's count across requests
    // (successive requests reach the most recently used instance).
    count_filtered(&sb, true);
    let server = start(&sb, &[]);
    assert_eq!(filter_then_stats(&server), "processed 2 images");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// `capgate serve` under load from several client threads for a bounded time
/// (`CAPGATE_LOAD_SECS`, default 5): a mix of allowed requests and requests whose call the
/// policy denies. Every allowed request succeeds, every denial is in the audit log, the
/// server's memory does not grow with the number of requests, and the log verifies.
#[test]
fn serve_under_load_answers_every_allowed_request_and_audits_every_denial() {
    const CLIENTS: usize = 4;
    let secs: u64 = std::env::var("CAPGATE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let sb = sandbox();
    let mut server = start(
        &sb,
        &["--audit", "audit.jsonl", "--audit-key", "keys/auditor.key"],
    );
    let addr = server.addr.clone();
    // The server reports each denial on stderr: keep reading it, or the pipe fills up.
    let mut stderr = server.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let (png_in, _) = test_png(16, 9);
    let png_in = std::sync::Arc::new(png_in);

    let run = |until: std::time::Instant| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (addr, png) = (addr.clone(), png_in.clone());
                std::thread::spawn(move || {
                    let (mut allowed, mut denied, mut errors) = (0u64, 0u64, Vec::new());
                    let mut i = c;
                    while std::time::Instant::now() < until {
                        i += 1;
                        if i % 4 == 0 {
                            let (status, body) = request(&addr, "GET", "/admin", b"");
                            if status == 403 && body == b"forbidden\n" {
                                denied += 1;
                            } else {
                                errors.push(format!("/admin: {status}"));
                            }
                        } else {
                            let (status, body) = request(&addr, "POST", "/dimensions", &png);
                            if status == 200 && body.trim_ascii() == b"{\"width\":16,\"height\":9}"
                            {
                                allowed += 1;
                            } else {
                                errors.push(format!(
                                    "/dimensions: {status} {}",
                                    String::from_utf8_lossy(&body)
                                ));
                            }
                        }
                    }
                    (allowed, denied, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).fold(
            (0, 0, Vec::new()),
            |(a, d, mut e), (a2, d2, e2)| {
                e.extend(e2);
                (a + a2, d + d2, e)
            },
        )
    };

    // Warm up (instances, caches), then measure memory before and after the main run.
    let warm = run(std::time::Instant::now() + std::time::Duration::from_secs(1));
    let before = rss_kib(server.child.id());
    let main = run(std::time::Instant::now() + std::time::Duration::from_secs(secs));
    let after = rss_kib(server.child.id());
    let (allowed, denied) = (warm.0 + main.0, warm.1 + main.1);
    eprintln!(
        "load: {secs}s, {CLIENTS} clients: {allowed} allowed and {denied} denied requests ({:.0}/s); RSS {before} KiB -> {after} KiB",
        (main.0 + main.1) as f64 / secs as f64
    );
    assert!(
        warm.2.is_empty() && main.2.is_empty(),
        "errors: {:?} {:?}",
        warm.2,
        main.2
    );
    assert!(main.0 > 0 && main.1 > 0, "the load did not run: {main:?}");
    // Memory flat: the main run served many times the warm-up's requests; allow for the
    // allocator's slack, not for growth per request.
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} KiB to {after} KiB over {} requests",
        main.0 + main.1
    );

    assert!(
        Command::new("kill")
            .args(["-INT", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(server.child.wait().unwrap().success());
    let stderr = drain.join().unwrap();
    // Every denial is reported on stderr too: shown, or counted in a throttled
    // "N more denials not shown" line.
    let shown = stderr.matches("denied `http-handler` call").count() as u64;
    let held: u64 = stderr.lines().filter_map(held_count).sum();
    assert_eq!(shown + held, denied, "every denial is reported on stderr");

    // Every denial is in the log, and so is every allowed call (the policy records all).
    let log = std::fs::read_to_string(sb.path("audit.jsonl")).unwrap();
    // Repeated identical denials are folded into one record with a `count`.
    let count = |function: &str, decision: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&format!("#{function}\""))
                    && l.contains(&format!("\"decision\":\"{decision}\""))
            })
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["count"]
                    .as_u64()
                    .unwrap_or(1)
            })
            .sum::<u64>()
    };
    assert_eq!(count("admin-stats", "deny"), denied);
    assert_eq!(count("get-dimensions", "allow"), allowed);
    sb.capgate(["audit", "verify", "audit.jsonl", "--trust", "trust.yaml"])
        .expect(0)
        .stdout_has("checkpoint(s) signed by auditor, the last at the end of the log");
}

/// N, from a "capgate: N more denials not shown ..." line of stderr.
fn held_count(line: &str) -> Option<u64> {
    let (n, rest) = line.strip_prefix("capgate: ")?.split_once(' ')?;
    rest.starts_with("more denials not shown")
        .then(|| n.parse().ok())
        .flatten()
}

/// Sends `body` as a chunked request (no length announced) and returns the status.
fn chunked(addr: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").unwrap();
    for chunk in body.chunks(1 << 16) {
        // The server may stop reading once the limit is passed.
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A W×H RGB image of noise: its PNG does not compress, so its size is about 3·W·H bytes.
fn noisy_png(w: u32, h: u32) -> Vec<u8> {
    let pixels: Vec<u8> = (0..w * h * 3)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&pixels).unwrap();
    wr.finish().unwrap();
    out
}

#[test]
fn request_bodies_past_limits_body_are_refused_and_the_server_goes_on() {
    let sb = sandbox();
    let big = noisy_png(48, 48);
    assert!(big.len() > 4096, "{}", big.len());
    let (small, _) = test_png(16, 9);
    assert!(small.len() < 4096);

    // Control: without the limit (16 MiB by default), the big image is read in full.
    let mut server = start(&sb, &[]);
    assert_eq!(chunked(&server.addr, "/dimensions", &big), 200);
    let _ = server.child.kill();
    let _ = server.child.wait();

    // A 4 KiB limit for the handler.
    let policy = std::fs::read_to_string(sb.path("policies/image-service/policy.yaml")).unwrap();
    sb.write(
        "policies/image-service/policy.yaml",
        // A changed policy is a new version (a host refuses other content under a version
        // it accepted).
        policy
            .replace(
                "limits: { memory: 64MiB, timeout: 10s, instances: 8 }",
                "limits: { memory: 64MiB, timeout: 10s, instances: 8, body: 4KiB }",
            )
            .replacen("version: 1", "version: 2", 1),
    );
    std::fs::remove_file(sb.path("policies/image-service/policy.yaml.sig")).unwrap();
    sign_policy(&sb);
    let server = start(&sb, &[]);

    // Announced too large: refused before any guest runs.
    let (status, body) = request(&server.addr, "POST", "/dimensions", &big);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(String::from_utf8_lossy(&body), "payload too large\n");
    // Not announced: the body is cut off at the limit, so the handler cannot read it all.
    let status = chunked(&server.addr, "/dimensions", &big);
    assert_ne!(status, 200, "a body past the limit was read in full");
    assert_ne!(status, 0, "no response");
    // Controls: a small request works afterwards, announced or chunked.
    let (status, _) = request(&server.addr, "POST", "/dimensions", &small);
    assert_eq!(status, 200);
    assert_eq!(chunked(&server.addr, "/dimensions", &small), 200);
}

#[test]
fn sigterm_stops_serve_cleanly_and_the_audit_log_is_sealed() {
    let sb = sandbox();
    let mut server = start(
        &sb,
        &["--audit", "audit.jsonl", "--audit-key", "keys/auditor.key"],
    );
    let (status, _) = request(&server.addr, "GET", "/admin", b"");
    assert_eq!(status, 403);
    assert!(
        Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        server.child.wait().unwrap().success(),
        "serve did not exit cleanly on SIGTERM"
    );
    // Closed with its final checkpoint: it verifies as a finished log, not only with `--live`.
    sb.capgate(["audit", "verify", "audit.jsonl", "--trust", "trust.yaml"])
        .expect(0);
    sb.capgate(["audit", "query", "audit.jsonl", "--decision", "deny"])
        .expect(0)
        .stdout_has("admin-stats");
}
