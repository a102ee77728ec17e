//! Hostile guests against capgate's resource limits, through the real `capgate run` and
//! `capgate serve`: huge output, socket floods, handle floods, huge HTTP bodies in both
//! directions, and components with thousands of imports. Each is stopped or refused with an
//! error naming the limit, each has a control showing the same operation works below it, and
//! the server keeps serving afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};

use common::{Run, Sandbox, pong_server, request, request_raw, run_probe, serve, signed_policy};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// An HTTP/1.1 server for body sizes: `GET /big/N` answers with N bytes; any other request has
/// its body read (content-length or chunked) and is answered with `got N`.
fn body_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = answer(c);
            });
        }
    });
    addr
}

fn answer(c: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(&c);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        chunked |= l == "transfer-encoding: chunked";
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut w = &c;
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
        )?;
        let chunk = vec![b'z'; 64 * KIB];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            w.write_all(&chunk[..k])?;
            left -= k;
        }
        return Ok(());
    }
    let mut got = 0usize;
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data)?;
            got += n;
            if n == 0 {
                break;
            }
        }
    } else {
        let mut data = vec![0u8; length];
        r.read_exact(&mut data)?;
        got = length;
    }
    let body = format!("got {got}");
    write!(
        w,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Fixture {
    sb: Sandbox,
    pong: SocketAddr,
    web: SocketAddr,
}

fn fixture() -> Fixture {
    let sb = Sandbox::new();
    let pong = pong_server("127.0.0.1:0").unwrap();
    let web = body_server();
    let policy = format!(
        "capgate: 1
name: exhaustion
version: 1
components:
  probe:
    component: probe.wasm
    network:
      connect: [tcp://{pong}]
    http: [http://{web}]
    limits: {{ timeout: 20s, output: 1MiB, sockets: 8, body: 1MiB }}
  flood:
    component: flood.wasm
    limits: {{ timeout: 20s, body: 1MiB }}
"
    );
    signed_policy(&sb, &["probe", "flood"], &policy);
    Fixture { sb, pong, web }
}

impl Fixture {
    fn probe(&self, args: &[&str]) -> Run {
        run_probe(&self.sb, "probe", args)
    }
}

/// `capgate serve` of the signed policy's `flood` component on a loopback port.
fn serve_flood(sb: &Sandbox) -> common::Server {
    serve(
        sb,
        &[
            "serve",
            "--policy",
            "policy.yaml",
            "--trust",
            "trust.yaml",
            "--component",
            "flood",
            "--listen",
            "127.0.0.1:0",
        ],
    )
}

#[track_caller]
fn stopped(r: &Run, message: &str) {
    r.expect(69).stderr_has(message);
}

#[test]
fn huge_output_is_stopped_at_limits_output() {
    let f = fixture();
    let r = f.probe(&["print", &(2 * MIB).to_string()]);
    stopped(
        &r,
        "component `probe` stopped: output limit of 1MiB exceeded (`limits.output`)",
    );
    assert!(
        r.stdout.len() <= MIB,
        "{} bytes got out past the limit",
        r.stdout.len()
    );
    // Control: below the limit the same write goes through whole.
    let r = f.probe(&["print", &(512 * KIB).to_string()]);
    r.expect(0).stdout_has("ok: printed 524288");
    assert_eq!(r.stdout.bytes().filter(|&b| b == b'x').count(), 512 * KIB);
}

#[test]
fn a_socket_flood_is_held_to_limits_sockets() {
    let f = fixture();
    let pong = f.pong.to_string();
    let r = f.probe(&["sockets", &pong, "100"]);
    r.expect(0);
    assert!(
        r.stdout.starts_with("err: round 0, after 8: "),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    // Control: up to the limit, over and over (a dropped socket frees its place).
    r.expect(0);
    f.probe(&["sockets", &pong, "8", "5"])
        .expect(0)
        .stdout_has("ok: 8 x 5");
}

#[test]
fn a_handle_flood_is_stopped_at_the_per_instance_bound() {
    let f = fixture();
    stopped(
        &f.probe(&["pollables", "20000"]),
        "component `probe` stopped: the instance holds 8192 handles",
    );
    f.probe(&["pollables", "4000"])
        .expect(0)
        .stdout_has("ok: 4000");
}

#[test]
fn http_bodies_past_limits_body_are_cut_off_both_ways() {
    let f = fixture();
    let web = f.web;
    // In: a response larger than the limit fails part way. (wasmtime-wasi-http 48 gives the
    // guest the failed read but no error code for it: `http-error-code` answers `none`.)
    let r = f.probe(&["http", "GET", &format!("http://{web}/big/{}", 2 * MIB)]);
    r.expect(0);
    let got: usize = r
        .stdout
        .strip_prefix("err: body after ")
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(got <= MIB, "{got} bytes read past the limit");
    let r = f.probe(&["http", "GET", &format!("http://{web}/big/{}", 512 * KIB)]);
    r.expect(0);
    assert!(r.stdout.starts_with("ok: 200 zzz"), "{}", &r.stdout[..80]);
    assert_eq!(r.stdout.trim().len(), "ok: 200 ".len() + 512 * KIB);
    // Out: a request body larger than the limit is not sent whole.
    let url = format!("http://{web}/upload");
    let r = f.probe(&["post", &url, &(2 * MIB).to_string()]);
    r.expect(0);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    assert!(r.stdout.contains("HttpRequestBodySize"), "{}", r.stdout);
    f.probe(&["post", &url, &(512 * KIB).to_string()])
        .expect(0)
        .stdout_has("ok: 200 got 524288");
}

#[test]
fn a_served_response_past_limits_body_is_cut_off_and_the_server_goes_on() {
    let f = fixture();
    let server = serve_flood(&f.sb);
    let (status, body, complete) = request_raw(&server.addr, "GET", &format!("/{}", 4 * MIB), b"");
    assert_eq!(status, 200);
    assert!(!complete, "a 4 MiB response passed a 1 MiB limit");
    assert!(
        body.len() <= MIB,
        "{} bytes sent past the limit",
        body.len()
    );
    // Control, and the server is still there: a response under the limit arrives whole.
    let (status, body) = request(&server.addr, "GET", &format!("/{}", 512 * KIB), b"");
    assert_eq!((status, body.len()), (200, 512 * KIB));
}

/// A component importing `n` distinct (empty) interfaces.
fn many_imports(n: usize) -> Vec<u8> {
    use wasm_encoder::{
        Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType,
    };
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    let mut imports = ComponentImportSection::new();
    for i in 0..n {
        imports.import(
            format!("hostile:many/i{i}").as_str(),
            ComponentTypeRef::Instance(0),
        );
    }
    let mut c = Component::new();
    c.section(&types);
    c.section(&imports);
    c.finish()
}

#[test]
fn components_with_thousands_of_imports_are_refused_clearly() {
    let sb = Sandbox::new();
    // Past the validator's bound on instances (1,000), the component is refused as invalid
    // before it is compiled.
    sb.write("huge.wasm", many_imports(5000));
    sb.capgate(["inspect", "huge.wasm"])
        .expect(65)
        .stderr_has("not a valid WebAssembly component")
        .stderr_has("instances count exceeds limit of 1000");
    // Below it, `inspect` reads the component and lists every import ...
    sb.write("many.wasm", many_imports(999));
    sb.capgate(["inspect", "many.wasm"])
        .expect(0)
        .stdout_has("hostile:many/i998");
    // ... and `run` refuses it before anything runs, naming an import no policy provides.
    signed_policy(
        &sb,
        &[],
        "capgate: 1\nname: many\nversion: 1\ncomponents:\n  many: { component: many.wasm }\n",
    );
    sb.capgate(["sign", "artifact", "many.wasm", "--key", "keys/release.key"])
        .expect(0);
    run_probe(&sb, "many", &[])
        .expect(65)
        .stderr_has("hostile:many/i");
}

/// A component exporting `grow: func(size: u32) -> u32`: its core module has `TABLES` funcref
/// tables, and `grow` grows each by `size` elements, trapping if one growth is refused;
/// it returns how many tables it grew.
fn table_grower() -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ComponentBuilder, ComponentExportKind, ComponentValType, ExportKind,
        ExportSection, FunctionSection, Instruction, Module, PrimitiveValType, RefType,
        TableSection, TableType, TypeSection, ValType,
    };
    const TABLES: u32 = 100;
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    module.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    module.section(&funcs);
    let mut tables = TableSection::new();
    for _ in 0..TABLES {
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: 0,
            maximum: None,
            shared: false,
        });
    }
    module.section(&tables);
    let mut exports = ExportSection::new();
    exports.export("grow", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    let mut f = wasm_encoder::Function::new([]);
    for t in 0..TABLES {
        f.instruction(&Instruction::RefNull(wasm_encoder::HeapType::FUNC));
        f.instruction(&Instruction::LocalGet(0));
        f.instruction(&Instruction::TableGrow(t));
        f.instruction(&Instruction::I32Const(-1));
        f.instruction(&Instruction::I32Eq);
        f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
        f.instruction(&Instruction::Unreachable);
        f.instruction(&Instruction::End);
    }
    f.instruction(&Instruction::I32Const(TABLES as i32));
    f.instruction(&Instruction::End);
    code.function(&f);
    module.section(&code);

    let mut c = ComponentBuilder::default();
    let m = c.core_module(None, &module);
    let inst = c.core_instantiate(None, m, []);
    let core = c.core_alias_export(None, inst, "grow", ExportKind::Func);
    let (ty, mut enc) = c.type_function(None);
    enc.params([("size", ComponentValType::Primitive(PrimitiveValType::U32))])
        .result(Some(ComponentValType::Primitive(PrimitiveValType::U32)));
    let func = c.lift_func(None, core, ty, []);
    c.export("grow", ComponentExportKind::Func, func, None);
    c.finish()
}

#[test]
fn tables_count_against_limits_memory() {
    let sb = Sandbox::new();
    sb.write("grower.wasm", table_grower());
    signed_policy(
        &sb,
        &[],
        "capgate: 1\nname: tables\nversion: 1\ncomponents:\n  grower:\n    component: grower.wasm\n    limits: { memory: 1MiB }\n",
    );
    sb.capgate([
        "sign",
        "artifact",
        "grower.wasm",
        "--key",
        "keys/release.key",
    ])
    .expect(0);
    let call = |size: &str| {
        sb.capgate([
            "call",
            "--policy",
            "policy.yaml",
            "--trust",
            "trust.yaml",
            "grower",
            "grow",
            size,
        ])
    };
    // The attack: 100 tables of 2^20 elements each (800 MiB of host memory) under 1 MiB.
    call("1048576").expect(69).stderr_has(
        "memory limit of 1MiB exceeded (`limits.memory`: linear memories and tables together)",
    );
    // Control: the same tables, 100 elements each (80 KiB), fit.
    call("100").expect(0).stdout_has("100");
}

/// A server that answers every request with headers and a body that never ends, holding each
/// connection open for `hold` (the shape of a guest holding its outbound requests).
fn endless_server(hold: std::time::Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + hold;
        listener.set_nonblocking(true).unwrap();
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n",
                        );
                        std::thread::sleep(hold);
                    });
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
    addr
}

#[test]
fn outbound_http_connections_count_against_limits_sockets() {
    let sb = Sandbox::new();
    let server = endless_server(std::time::Duration::from_secs(30));
    let policy = |sockets: u32| {
        format!(
            "capgate: 1\nname: conns\nversion: {sockets}\ncomponents:\n  probe:\n    component: probe.wasm\n    http: [http://127.0.0.1:{}/]\n    limits: {{ sockets: {sockets} }}\n",
            server.port()
        )
    };
    signed_policy(&sb, &["probe"], &policy(4));
    let url = format!("http://{server}/x");
    // The attack: 50 requests held at once; 4 get connections, the rest a clean error.
    run_probe(&sb, "probe", &["http-hold", &url, "50"])
        .expect(0)
        .stdout_has("ok: 4 [\"ErrorCode::ConnectionLimitReached\"]");
    // Control: with room for them, all 20 connect.
    common::resign_policy(&sb, &policy(64));
    run_probe(&sb, "probe", &["http-hold", &url, "20"])
        .expect(0)
        .stdout_has("ok: 20 []");
}

#[test]
fn busy_handlers_do_not_hold_the_server_and_sigterm_stops_it() {
    let sb = Sandbox::new();
    // One worker thread per core; the machine may have two. Three busy handlers, more than
    // there are workers, with time to spare before their timeout.
    signed_policy(
        &sb,
        &["flood"],
        "capgate: 1\nname: busy\nversion: 1\ncomponents:\n  flood:\n    component: flood.wasm\n    limits: { timeout: 60s, fuel: 100000000000000, instances: 8 }\n",
    );
    let server = serve_flood(&sb);
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                // Killed with the server; the answer does not matter.
                let _ = std::net::TcpStream::connect(&addr).and_then(|mut s| {
                    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
                    write!(s, "GET /spin HTTP/1.1\r\nhost: x\r\n\r\n")?;
                    let mut b = [0u8; 64];
                    s.read(&mut b)
                });
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Other requests are still served while the handlers spin.
    let started = std::time::Instant::now();
    let (status, body) = request(&server.addr, "GET", "/5", b"");
    assert_eq!((status, body.len()), (200, 5));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a request waited {:?} behind busy handlers",
        started.elapsed()
    );
    // And SIGTERM stops the server: in flight requests get the grace period, not more.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped_at = std::time::Instant::now();
    loop {
        if server.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            stopped_at.elapsed() < std::time::Duration::from_secs(20),
            "serve did not stop on SIGTERM while handlers spun"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for s in spinners {
        let _ = s.join();
    }
}

#[test]
fn idle_clients_are_cut_off_and_do_not_block_others() {
    let sb = Sandbox::new();
    signed_policy(
        &sb,
        &["flood"],
        "capgate: 1\nname: idle\nversion: 1\ncomponents:\n  flood:\n    component: flood.wasm\n",
    );
    let server = serve_flood(&sb);
    // The attack: 200 connections that never send a request.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    // Control, at once: a real request is served.
    let (status, body) = request(&server.addr, "GET", "/3", b"");
    assert_eq!((status, body.len()), (200, 3));
    // Each idle connection is closed once the header timeout (10 s) has passed.
    let started = std::time::Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut b = [0u8; 16];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got data");
    }
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(16),
        "idle connections were kept {waited:?}"
    );
    // The server is still there.
    let (status, _) = request(&server.addr, "GET", "/1", b"");
    assert_eq!(status, 200);
}

#[test]
fn a_policy_that_expires_while_served_stops_being_served() {
    let sb = Sandbox::new();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    signed_policy(
        &sb,
        &["flood"],
        &format!(
            "capgate: 1\nname: brief\nversion: 1\nexpires: {expires}\ncomponents:\n  flood:\n    component: flood.wasm\n"
        ),
    );
    let mut server = serve_flood(&sb);
    // Control: served while valid.
    let (status, body) = request(&server.addr, "GET", "/2", b"");
    assert_eq!((status, body.len()), (200, 2));
    // Then it stops by itself, refusing (exit 77) and saying why.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "serve went on past its policy's expiry"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(77));
    let mut rest = String::new();
    let _ = server.stderr.take().unwrap().read_to_string(&mut rest);
    assert!(rest.contains("has expired"), "{rest}");
    assert!(rest.contains("expired at"), "{rest}");
}

/// Policy versions for [`accept_flood`]: each run signs a new one.
static VERSION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);

/// Runs the probe's `accept` op on a free loopback port under `limits.sockets: SOCKETS` while
/// up to `clients` connections are made to it; returns the run and how many connected.
fn accept_flood(sb: &Sandbox, sockets: u32, accept: usize, clients: usize) -> (Run, usize) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    common::resign_policy(
        sb,
        &format!(
            "capgate: 1\nname: accept\nversion: {}\ncomponents:\n  probe:\n    component: probe.wasm\n    network:\n      bind: [tcp://127.0.0.1:{port}]\n    limits: {{ sockets: {sockets}, timeout: 30s }}\n",
            VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ),
    );
    let addr = format!("127.0.0.1:{port}");
    let mut child = sb
        .command(common::run_argv(
            &[],
            "probe",
            &["accept", &addr, &accept.to_string()],
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Connect as soon as the guest listens, until `clients` are connected or the guest has
    // stopped listening. Peers the guest has not accepted wait in the backlog; all are held
    // until the guest has exited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut held = Vec::new();
    while held.len() < clients && std::time::Instant::now() < deadline {
        match std::net::TcpStream::connect(&addr) {
            Ok(s) => held.push(s),
            Err(_) if child.try_wait().unwrap().is_some() => break,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().unwrap();
    (Run::from_output(out), held.len())
}

#[test]
fn accepted_connections_count_against_limits_sockets() {
    let sb = Sandbox::new();
    signed_policy(
        &sb,
        &["probe"],
        "capgate: 1\nname: accept\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n",
    );
    // The attack: 40 peers connect to a guest that accepts all it can. The listener holds two
    // places of four (itself, and the connection accepted ahead of the guest), so two
    // connections are accepted and the third accept fails cleanly.
    let (r, connected) = accept_flood(&sb, 4, 40, 40);
    r.expect(0);
    assert!(
        r.stdout.contains("err: after 2: "),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(connected > 2, "only {connected} peers connected");
    // Control: within the limit, every connection is accepted.
    let (r, connected) = accept_flood(&sb, 4, 2, 2);
    r.expect(0).stdout_has("ok: accepted 2");
    assert_eq!(connected, 2);
}

#[test]
fn a_failed_handler_tells_the_client_only_its_status_and_the_operator_why() {
    let sb = Sandbox::new();
    signed_policy(
        &sb,
        &["flood"],
        "capgate: 1\nname: failing\nversion: 1\ncomponents:\n  flood:\n    component: flood.wasm\n    limits: { timeout: 1s }\n",
    );
    let mut server = serve_flood(&sb);
    // The handler spins past its timeout: the client gets a bare 500...
    let (status, body) = request(&server.addr, "GET", "/spin", b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (500, "internal server error\n")
    );
    // ...and the operator the reason, on stderr.
    let mut stderr = server.stderr.take().unwrap();
    let mut line = String::new();
    while !line.contains("answered 500") {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "no failure reported"
        );
    }
    assert!(
        line.contains("capgate: request to `flood` answered 500: ")
            && line.contains("`limits.timeout`"),
        "{line}"
    );
    // Control: a request within the limit is answered by the handler.
    let (status, body) = request(&server.addr, "GET", "/4", b"");
    assert_eq!((status, body.len()), (200, 4));
}

/// A component whose core start function blocks in a host call for `nanos`, then exports
/// `wasi:cli/run`.
fn blocking_start(nanos: u64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
  (type $pt (instance
    (export "pollable" (type (sub resource)))
    (type (borrow 0))
    (type (func (param "self" 1)))
    (export "[method]pollable.block" (func (type 2)))))
  (import "wasi:io/poll@0.2.0" (instance $poll (type $pt)))
  (alias export $poll "pollable" (type $pollable))
  (type $ct (instance
    (alias outer 1 $pollable (type))
    (export "pollable" (type (eq 0)))
    (type (own 1))
    (type (func (param "when" u64) (result 2)))
    (export "subscribe-duration" (func (type 3)))))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock (type $ct)))
  (alias export $clock "subscribe-duration" (func $sub))
  (alias export $poll "[method]pollable.block" (func $block))
  (core func $csub (canon lower (func $sub)))
  (core func $cblock (canon lower (func $block)))
  (core module $m
    (import "h" "sub" (func $sub (param i64) (result i32)))
    (import "h" "block" (func $block (param i32)))
    (func $start (call $block (call $sub (i64.const {nanos}))))
    (start $start)
    (func (export "run") (result i32) i32.const 0)
    (func (export "f") (result i32) i32.const 42))
  (core instance $hi (export "sub" (func $csub)) (export "block" (func $cblock)))
  (core instance $i (instantiate $m (with "h" (instance $hi))))
  (func $f (result u32) (canon lift (core func $i "f")))
  (export "f" (func $f))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $ri (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $ri)))"#
    ))
    .unwrap()
}

#[test]
fn a_start_function_blocked_in_a_host_call_is_stopped_at_limits_timeout() {
    let sb = Sandbox::new();
    let policy = |version: u32| {
        format!(
            "capgate: 1\nname: start\nversion: {version}\ncomponents:\n  block:\n    component: block.wasm\n    limits: {{ timeout: 1s }}\n"
        )
    };
    // The attack: a start function that waits an hour where epochs cannot interrupt it.
    sb.write("block.wasm", blocking_start(3_600_000_000_000));
    signed_policy(&sb, &[], &policy(1));
    sb.capgate([
        "sign",
        "artifact",
        "block.wasm",
        "--key",
        "keys/release.key",
    ])
    .expect(0);
    let within_30s = |argv: Vec<&str>| {
        let mut child = sb
            .command(argv)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("not stopped near its 1 s timeout");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Run::from_output(child.wait_with_output().unwrap())
    };
    stopped(
        &within_30s(common::run_argv(&[], "block", &[])),
        "`limits.timeout`",
    );
    // The same instance started for a call (the path linked callees take).
    let call = vec![
        "call",
        "--policy",
        "policy.yaml",
        "--trust",
        "trust.yaml",
        "block",
        "f",
    ];
    stopped(&within_30s(call.clone()), "`limits.timeout`");
    // Control: a start function that waits 10 ms runs to completion.
    sb.write("block.wasm", blocking_start(10_000_000));
    sb.capgate([
        "sign",
        "artifact",
        "block.wasm",
        "--key",
        "keys/release.key",
        "--replace",
    ])
    .expect(0);
    common::resign_policy(&sb, &policy(2));
    run_probe(&sb, "block", &[]).expect(0);
    sb.capgate(call).expect(0).stdout_has("42");
}
