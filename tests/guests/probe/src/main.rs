//! A hostile guest for the escape table: each invocation attempts one thing and prints one
//! line, `ok: ...` or `err: KIND: message`, so tests can assert exactly what happened.
//!
//! Usage: probe OP [ARGS...]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};

fn report<T: std::fmt::Debug>(r: std::io::Result<T>) {
    match r {
        Ok(v) => println!("ok: {v:?}"),
        Err(e) => println!("err: {:?}: {e}", e.kind()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("");
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    match op {
        "args" => println!("ok: {:?}", args),
        "read" => report(std::fs::read_to_string(a(2))),
        // Opens PATH N times and keeps every handle: how many it got, and why it stopped.
        "open-many" => {
            let n: usize = a(3).parse().unwrap_or(0);
            let mut held = Vec::new();
            for _ in 0..n {
                match std::fs::File::open(a(2)) {
                    Ok(f) => held.push(f),
                    Err(e) => {
                        println!("err: after {}: {:?}: {e}", held.len(), e.kind());
                        return;
                    }
                }
            }
            println!("ok: {}", held.len());
        }
        // One line per path: what reading it gives (for generated path tables).
        "read-each" => {
            for p in &args[2..] {
                report(std::fs::read_to_string(p));
            }
        }
        "list" => report(std::fs::read_dir(a(2)).map(|d| {
            let mut names: Vec<String> = d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        })),
        "read-nul" => report(std::fs::read_to_string(format!("{}\0.txt", a(2)))),
        "write" => report(std::fs::write(a(2), a(3))),
        "create" => report(std::fs::File::create_new(a(2)).map(|_| ())),
        "append" => report(std::fs::OpenOptions::new().append(true).open(a(2)).and_then(|mut f| f.write_all(b"more"))),
        "truncate" => report(std::fs::OpenOptions::new().write(true).open(a(2)).and_then(|f| f.set_len(0))),
        "remove" => report(std::fs::remove_file(a(2))),
        "rmdir" => report(std::fs::remove_dir(a(2))),
        "mkdir" => report(std::fs::create_dir(a(2))),
        "rename" => report(std::fs::rename(a(2), a(3))),
        "hardlink" => report(std::fs::hard_link(a(2), a(3))),
        "set-times" => report(std::fs::File::open(a(2)).and_then(|f| f.set_modified(std::time::SystemTime::UNIX_EPOCH))),
        // Descriptor calls after a read-only open.
        "ro-set-size" => report(std::fs::File::open(a(2)).and_then(|f| f.set_len(0))),
        "ro-sync" => report(std::fs::File::open(a(2)).and_then(|f| f.sync_all())),
        // Opens that grant more than one access: read through them.
        "open-rw" => report(std::fs::OpenOptions::new().read(true).write(true).open(a(2)).and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s).map(|_| s)
        })),
        "create-read" => report(std::fs::OpenOptions::new().read(true).write(true).create(true).open(a(2)).and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s).map(|_| s)
        })),
        "stat" => report(std::fs::metadata(a(2)).map(|m| m.len())),
        // Reads PATH N times: how many reads worked.
        "read-n" => {
            let n: usize = a(3).parse().unwrap_or(0);
            let worked = (0..n).filter(|_| std::fs::read(a(2)).is_ok()).count();
            println!("ok: {worked}");
        }
        // Sends N GET requests to URL and holds every response (and its connection) open:
        // how many got a response, and the error of the others.
        "http-hold" => {
            let n: usize = a(3).parse().unwrap_or(0);
            let (held, errors) = http_hold(&a(2), n);
            println!("ok: {} {errors:?}", held.len());
        }
        "initial-cwd" => println!("ok: {:?}", wasi::cli::environment::initial_cwd()),
        // Creates DIR/f0 .. DIR/f(N-1), each a new file: how many were created.
        "create-many" => {
            let n: usize = a(3).parse().unwrap_or(0);
            let made = (0..n).filter(|i| std::fs::File::create_new(format!("{}/f{i}", a(2))).is_ok()).count();
            println!("ok: {made}");
        }
        "lstat" => report(std::fs::symlink_metadata(a(2)).map(|m| m.is_dir())),
        // Moves `FROM` to `TO`, reads `TO/FILE`, and moves it back: one run, three calls.
        "rename-read" => {
            let (from, to) = (a(2), a(3));
            let moved = std::fs::rename(&from, &to);
            let read = moved.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string())).and_then(|_| std::fs::read_to_string(format!("{to}/{}", a(4))));
            if moved.is_ok() {
                let _ = std::fs::rename(&to, &from);
            }
            report(read)
        }
        "env" => match std::env::var(a(2)) {
            Ok(v) => println!("ok: {v}"),
            Err(e) => println!("err: {e}"),
        },
        "env-all" => println!("ok: {:?}", std::env::vars().map(|(k, _)| k).collect::<Vec<_>>()),
        "connect" => report(a(2).parse::<std::net::SocketAddr>().map_err(std::io::Error::other).and_then(|addr| {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"ping\n")?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        })),
        "bind" => report(std::net::TcpListener::bind(a(2)).map(|_| ())),
        "udp" => report(UdpSocket::bind(a(2)).and_then(|s| s.send_to(b"x", a(3)))),
        "lookup" => report((a(2).as_str(), 80).to_socket_addrs().map(|it| it.count())),
        "alloc" => {
            let mut v: Vec<Vec<u8>> = Vec::new();
            loop {
                v.push(vec![1u8; 1 << 20]);
            }
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "recurse" => {
            fn deep(n: u64) -> u64 {
                if n == u64::MAX {
                    return 0;
                }
                std::hint::black_box(deep(n + 1)) + 1
            }
            println!("{}", deep(0));
        }
        // Writes N bytes to stdout in 64 KiB chunks.
        "print" => {
            let n: usize = a(2).parse().unwrap_or(0);
            let chunk = vec![b'x'; 64 * 1024];
            let mut out = std::io::stdout().lock();
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                if let Err(e) = out.write_all(&chunk[..k]) {
                    println!("err: {:?}: {e}", e.kind());
                    return;
                }
                left -= k;
            }
            let _ = out.flush();
            drop(out);
            println!("\nok: printed {n}");
        }
        // ROUNDS times: connects N times to ADDR and holds every connection, then drops them.
        "sockets" => {
            let (n, rounds): (usize, usize) = (a(3).parse().unwrap_or(0), a(4).parse().unwrap_or(1));
            for round in 0..rounds {
                let mut held = Vec::new();
                for _ in 0..n {
                    match TcpStream::connect(a(2).as_str()) {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            println!("err: round {round}, after {}: {:?}: {e}", held.len(), e.kind());
                            return;
                        }
                    }
                }
            }
            println!("ok: {n} x {rounds}");
        }
        // Listens on ADDR and accepts N connections, holding every one.
        "accept" => {
            let n: usize = a(3).parse().unwrap_or(0);
            let listener = match std::net::TcpListener::bind(a(2)) {
                Ok(l) => l,
                Err(e) => {
                    println!("err: bind: {:?}: {e}", e.kind());
                    return;
                }
            };
            println!("listening");
            let mut held = Vec::new();
            while held.len() < n {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(e) => {
                        println!("err: after {}: {:?}: {e}", held.len(), e.kind());
                        return;
                    }
                }
            }
            println!("ok: accepted {n}");
        }
        // Starts N lookups of NAME, dropping each stream before its answer is read.
        "lookup-drop" => {
            let n: usize = a(3).parse().unwrap_or(0);
            let net = wasi::sockets::instance_network::instance_network();
            for i in 0..n {
                if let Err(e) = wasi::sockets::ip_name_lookup::resolve_addresses(&net, &a(2)) {
                    println!("err: after {i}: {e:?}");
                    return;
                }
            }
            println!("ok: started {n}");
        }
        // Looks NAME up N times, one after another, reading each answer.
        "lookup-n" => {
            let n: usize = a(3).parse().unwrap_or(0);
            for i in 0..n {
                if let Err(e) = (a(2).as_str(), 80).to_socket_addrs() {
                    println!("err: after {i}: {e}");
                    return;
                }
            }
            println!("ok: looked up {n}");
        }
        // Holds N pollables (handles with no host descriptor behind them).
        "pollables" => {
            let n: usize = a(2).parse().unwrap_or(0);
            let held: Vec<_> = (0..n).map(|_| wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000)).collect();
            println!("ok: {}", held.len());
        }
        // POSTs N bytes to URL.
        "post" => match http_body("POST", &a(2), a(3).parse().unwrap_or(0)) {
            Ok(v) => println!("ok: {v}"),
            Err(e) => println!("err: {e}"),
        },
        "http" => match http(&a(2), &a(3)) {
            Ok(v) => println!("ok: {v}"),
            Err(e) => println!("err: {e}"),
        },
        "symlink" => match symlink(&a(2), &a(3), &a(4)) {
            Ok(()) => println!("ok: ()"),
            Err(e) => println!("err: {e}"),
        },
        "exit" => std::process::exit(a(2).parse().unwrap_or(1)),
        "trap" => panic!("the probe was asked to trap"),
        _ => {
            eprintln!("probe: unknown op `{op}`");
            std::process::exit(2);
        }
    }
}

/// Sends `n` GETs to `url` at once and keeps every response that arrives (so each keeps its
/// connection); the distinct errors of the others.
fn http_hold(url: &str, n: usize) -> (Vec<wasi::http::types::IncomingResponse>, Vec<String>) {
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let (_, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut futures = Vec::new();
    for _ in 0..n {
        let req = OutgoingRequest::new(Fields::new());
        let _ = req.set_method(&Method::Get);
        let _ = req.set_scheme(Some(&Scheme::Http));
        let _ = req.set_authority(Some(authority));
        let _ = req.set_path_with_query(Some(path));
        let body = req.body().ok();
        if let Ok(f) = wasi::http::outgoing_handler::handle(req, None) {
            futures.push(f);
        }
        if let Some(b) = body {
            let _ = OutgoingBody::finish(b, None);
        }
    }
    let (mut held, mut errors) = (Vec::new(), Vec::new());
    for f in futures {
        f.subscribe().block();
        match f.get() {
            Some(Ok(Ok(r))) => held.push(r),
            Some(Ok(Err(e))) => {
                let e = format!("{e:?}");
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
            _ => {}
        }
    }
    (held, errors)
}

/// Sends `METHOD URL` through wasi:http/outgoing-handler; returns "STATUS BODY".
fn http(method: &str, url: &str) -> Result<String, String> {
    http_body(method, url, 0)
}

/// Sends `METHOD URL` with `send` bytes of body; returns "STATUS BODY", or the error that
/// ended the exchange (a failed body read reports the HTTP error code behind it).
fn http_body(method: &str, url: &str, send: usize) -> Result<String, String> {
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let (scheme, rest) = url.split_once("://").ok_or("bad url")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    let m = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    req.set_method(&m).map_err(|_| "method")?;
    let s = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    req.set_scheme(Some(&s)).map_err(|_| "scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let body = req.body().map_err(|_| "body")?;
    let fut = wasi::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    if send > 0 {
        let stream = body.write().map_err(|_| "body stream")?;
        let chunk = [b'y'; 4096];
        let mut left = send;
        while left > 0 {
            let k = left.min(chunk.len());
            if stream.blocking_write_and_flush(&chunk[..k]).is_err() {
                break;
            }
            left -= k;
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(body, None);
    fut.subscribe().block();
    let resp = match fut.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        _ => return Err("no response".into()),
    };
    let status = resp.status();
    let incoming = resp.consume().map_err(|_| "consume")?;
    let stream = incoming.stream().map_err(|_| "stream")?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(wasi::io::streams::StreamError::LastOperationFailed(e)) => {
                let code = wasi::http::types::http_error_code(&e);
                return Err(format!("body after {} bytes: {code:?}", out.len()));
            }
        }
    }
    Ok(format!("{status} {}", String::from_utf8_lossy(&out)))
}

/// Creates, in the preopened directory `mount`, a symlink `link` whose target is `target`
/// (std has no stable symlink call on WASI, so this uses the filesystem bindings directly).
fn symlink(mount: &str, target: &str, link: &str) -> Result<(), String> {
    let dirs = wasi::filesystem::preopens::get_directories();
    let (dir, _) = dirs.iter().find(|(_, p)| p == mount).ok_or(format!("no preopen {mount}"))?;
    dir.symlink_at(target, link).map_err(|e| format!("{e:?}"))
}
