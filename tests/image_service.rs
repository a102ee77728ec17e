//! The image-service demo end to end: the policy in `policies/image-service/`, the two guest
//! components signed, `capgate serve` on loopback, and a real HTTP client. The output PNG is
//! decoded and each pixel compared with the filter computed here, independently.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};

use common::{Sandbox, guests};

/// A `capgate serve` process and the address it listens on.
struct Server {
    child: Child,
    addr: String,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(sb: &Sandbox) -> Server {
    let mut child = sb
        .command([
            "serve",
            "--policy",
            "policies/image-service/policy.yaml",
            "--trust",
            "trust.yaml",
            "--component",
            "http-handler",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // The first line naming the address (warnings may come before it).
    let mut line = String::new();
    while !line.contains("http://") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("capgate serve exited before listening");
        }
    }
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Server {
        child,
        addr,
        stderr,
    }
}

/// Sends one HTTP/1.1 request and returns (status, body).
fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
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

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    sb.write(
        "policies/image-service/policy.yaml",
        std::fs::read(root.join("policies/image-service/policy.yaml")).unwrap(),
    );
    for g in ["http-handler", "image-processor"] {
        let dst = format!("examples/image-service/build/{}.wasm", g.replace('-', "_"));
        sb.write(&dst, std::fs::read(guests::guest(g)).unwrap());
    }
    sb.keys(&["release", "alice"]);
    sb.write(
        "trust.yaml",
        "capgate-trust: 1\nkeys: { release: keys/release.pub, alice: keys/alice.pub }\nroles:\n  artifact: { keys: [release], threshold: 1 }\n  policy: { keys: [alice], threshold: 1 }\n",
    );
    for f in [
        "examples/image-service/build/http_handler.wasm",
        "examples/image-service/build/image_processor.wasm",
    ] {
        sb.capgate(["sign", "artifact", f, "--key", "keys/release.key"])
            .expect(0);
    }
    sb.capgate([
        "sign",
        "policy",
        "policies/image-service/policy.yaml",
        "--key",
        "keys/alice.key",
    ])
    .expect(0);
    sb
}

#[test]
fn the_image_service_filters_real_pngs_through_capgate_serve() {
    let sb = sandbox();
    let mut server = start(&sb);
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

    // A call the policy does not grant fails the request and is reported with its reason;
    // the server goes on serving.
    let (status, body) = request(&server.addr, "GET", "/admin", b"");
    assert_eq!(status, 500);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("call from `http-handler` to `image-processor` example:image/image-processor@0.1.0#admin-stats denied: no grant matches"), "{body}");
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
    server.stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}\n{rest}");
    assert!(rest.contains("capgate: denied `http-handler` call image-processor/example:image/image-processor@0.1.0#admin-stats"), "{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
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
