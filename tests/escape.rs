//! The escape table: a hostile guest (`tests/guests/probe`) run through the real `capgate run`
//! under a signed policy. Every row asserts the exact outcome, and every denial has a positive
//! control showing the same grant works when the request is inside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Run, Sandbox, err, ok, pong_server, run_probe, run_probe_env, signed_probe_policy};

struct Fixture {
    sb: Sandbox,
    port: u16,
}

fn fixture() -> Fixture {
    let sb = Sandbox::new();
    sb.write("outside.txt", "outside secret\n");
    sb.write("data/a.txt", "hello\n");
    sb.write("data/sub/b.txt", "b\n");
    sb.write("out/keep.txt", "keep\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink("../outside.txt", sb.path("data/link")).unwrap();
    let port = pong_server("127.0.0.1:0").expect("listener").port();
    let policy = format!(
        "capgate: 1
name: escape
version: 1
components:
  probe:
    component: probe.wasm
    files:
      - {{ host: data, guest: /data, access: read-only }}
      - {{ host: out, guest: /out, access: read-write }}
    env: {{ GREETING: hi }}
    env_from_host: [CAPGATE_VISIBLE]
    network:
      connect: [tcp://127.0.0.1:{port}]
    limits: {{ memory: 32MiB, timeout: 2s, files: 64 }}
  probe-fuel:
    component: probe.wasm
    limits: {{ fuel: 50000000 }}
  probe-net:
    component: probe.wasm
    network:
      bind: [tcp://127.0.0.1:*]
      udp: [udp://127.0.0.1:*]
"
    );
    signed_probe_policy(&sb, &policy);
    Fixture { sb, port }
}

impl Fixture {
    fn probe(&self, args: &[&str]) -> Run {
        self.run("probe", args)
    }

    fn run(&self, component: &str, args: &[&str]) -> Run {
        run_probe(&self.sb, component, args)
    }
}

#[test]
fn files_escape_table() {
    let f = fixture();
    let data_before = std::fs::metadata(f.sb.path("data/a.txt"))
        .unwrap()
        .modified()
        .unwrap();

    // Positive controls: the grants work.
    ok(&f.probe(&["read", "/data/a.txt"]), "\"hello\\n\"");
    ok(&f.probe(&["read", "/data/sub/b.txt"]), "\"b\\n\"");
    ok(
        &f.probe(&["list", "/data"]),
        "[\"a.txt\", \"link\", \"sub\"]",
    );

    // Break-out attempts through paths.
    err(
        &f.probe(&["read", "/data/../outside.txt"]),
        "PermissionDenied",
    );
    err(
        &f.probe(&["read", "/data/sub/../../../../outside.txt"]),
        "PermissionDenied",
    );
    err(&f.probe(&["read", "/data/link"]), "PermissionDenied");
    let abs = f.probe(&["read", &f.sb.path("outside.txt").display().to_string()]);
    assert!(
        abs.stdout.starts_with("err: "),
        "absolute host path: {}",
        abs.stdout
    );
    err(&f.probe(&["read", "/etc/passwd"]), "NotFound");
    err(&f.probe(&["read-nul", "/data/a"]), "InvalidInput");

    // A symlink the guest creates cannot lead out either: an absolute target is refused when
    // it is created, and so is a relative one that climbs out (its target is decided like any
    // path, and lies outside every mount).
    let r = f.probe(&["symlink", "/out", "/etc/passwd", "abs"]);
    assert!(
        r.stdout.starts_with("err: "),
        "absolute symlink target: {}",
        r.stdout
    );
    let r = f.probe(&["symlink", "/out", "../outside.txt", "climb"]);
    assert!(
        r.stdout.contains("not-permitted"),
        "climbing symlink target: {}",
        r.stdout
    );
    r.stderr_has("denied `probe` fs.read /outside.txt: no grant matches");
    assert!(!f.sb.path("out/climb").exists());
    // Control: a symlink inside the mount works.
    ok(&f.probe(&["symlink", "/out", "keep.txt", "inside"]), "()");
    ok(&f.probe(&["read", "/out/inside"]), "\"keep\\n\"");
    let r = f.probe(&["symlink", "/data", "a.txt", "ro-link"]);
    assert!(
        r.stdout.starts_with("err: "),
        "symlink in the read-only mount: {}",
        r.stdout
    );

    // Every mutation of the read-only mount is refused...
    for (op, args) in [
        ("write", vec!["/data/a.txt", "x"]),
        ("create", vec!["/data/new.txt"]),
        ("append", vec!["/data/a.txt"]),
        ("truncate", vec!["/data/a.txt"]),
        ("remove", vec!["/data/a.txt"]),
        ("mkdir", vec!["/data/newdir"]),
        ("rmdir", vec!["/data/sub"]),
        ("set-times", vec!["/data/a.txt"]),
        ("rename", vec!["/data/a.txt", "/data/c.txt"]),
        ("hardlink", vec!["/data/a.txt", "/data/h.txt"]),
    ] {
        let mut argv = vec![op];
        argv.extend(args.iter().copied());
        let r = f.probe(&argv);
        assert!(
            r.stdout.starts_with("err: "),
            "{op} on the read-only mount: {}",
            r.stdout
        );
        // The denial names the grant that is read-only, not only that none matched.
        if op == "write" {
            r.stderr_has("capgate: denied `probe` fs.write /data/a.txt: no grant matches (`probe.files[0]` grants `/data` read-only)");
        }
    }
    // ...while each works on the read-write mount (controls).
    ok(&f.probe(&["write", "/out/w.txt", "x"]), "()");
    ok(&f.probe(&["create", "/out/new.txt"]), "()");
    ok(&f.probe(&["append", "/out/w.txt"]), "()");
    ok(&f.probe(&["truncate", "/out/w.txt"]), "()");
    ok(&f.probe(&["set-times", "/out/w.txt"]), "()");
    ok(&f.probe(&["mkdir", "/out/d"]), "()");
    ok(
        &f.probe(&["rename", "/out/new.txt", "/out/renamed.txt"]),
        "()",
    );
    ok(&f.probe(&["hardlink", "/out/w.txt", "/out/w2.txt"]), "()");
    ok(&f.probe(&["remove", "/out/w2.txt"]), "()");

    // Across mounts: no link or rename from the writable mount into the read-only one, or out.
    let r = f.probe(&["hardlink", "/data/a.txt", "/out/stolen.txt"]);
    assert!(
        r.stdout.starts_with("err: "),
        "hard link across mounts: {}",
        r.stdout
    );
    let r = f.probe(&["rename", "/out/renamed.txt", "/data/moved.txt"]);
    assert!(
        r.stdout.starts_with("err: "),
        "rename across mounts: {}",
        r.stdout
    );
    let r = f.probe(&["write", "/out/../outside.txt", "pwned"]);
    assert!(
        r.stdout.starts_with("err: "),
        "write above the mount: {}",
        r.stdout
    );

    // Host side: nothing outside the grants changed.
    assert_eq!(
        std::fs::read_to_string(f.sb.path("outside.txt")).unwrap(),
        "outside secret\n"
    );
    assert_eq!(
        std::fs::read_to_string(f.sb.path("data/a.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::metadata(f.sb.path("data/a.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        data_before
    );
    let mut names: Vec<String> = std::fs::read_dir(f.sb.path("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "link", "sub"]);
    assert!(f.sb.path("out/renamed.txt").exists() && !f.sb.path("out/stolen.txt").exists());
}

#[test]
fn environment_is_only_what_the_policy_grants() {
    let f = fixture();
    let env = [
        ("CAPGATE_SECRET", "topsecret"),
        ("CAPGATE_VISIBLE", "shown"),
    ];
    let run = |args: &[&str]| run_probe_env(&f.sb, "probe", args, &env);
    ok(&run(&["env", "GREETING"]), "hi");
    ok(&run(&["env", "CAPGATE_VISIBLE"]), "shown");
    let r = run(&["env", "CAPGATE_SECRET"]);
    r.expect(0);
    assert_eq!(r.stdout.trim(), "err: environment variable not found");
    ok(&run(&["env-all"]), "[\"GREETING\", \"CAPGATE_VISIBLE\"]");
    // argv[0] is the component name, then the policy's args, then the CLI's.
    ok(&run(&["args", "x"]), "[\"probe\", \"args\", \"x\"]");
}

#[test]
fn sockets_escape_table() {
    let f = fixture();
    // Control: the granted address and port reach a real listener.
    ok(
        &f.probe(&["connect", &format!("127.0.0.1:{}", f.port)]),
        "\"pong\\n\"",
    );

    // Each denial happens while a real listener is up, so it is the policy's doing.
    let other_port = pong_server("127.0.0.1:0").unwrap();
    let r = f.probe(&["connect", &other_port.to_string()]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    r.stderr_has(&format!(
        "capgate: denied `probe` net.connect tcp://{other_port}: no grant matches"
    ));

    let other_addr = pong_server(&format!("127.0.0.2:{}", f.port))
        .or_else(|| pong_server("127.0.0.2:0"))
        .unwrap();
    let r = f.probe(&["connect", &other_addr.to_string()]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    r.stderr_has(&format!("denied `probe` net.connect tcp://{other_addr}"));

    if let Some(v6) = pong_server(&format!("[::1]:{}", f.port)).or_else(|| pong_server("[::1]:0")) {
        let r = f.probe(&["connect", &v6.to_string()]);
        assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
        r.stderr_has(&format!("denied `probe` net.connect tcp://{v6}"));
    } else {
        eprintln!("SKIPPED: IPv6 loopback row, no ::1 on this machine");
    }

    // No bind grant: listening is refused; the same bind works with a grant (control).
    let r = f.probe(&["bind", "127.0.0.1:0"]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    ok(&f.run("probe-net", &["bind", "127.0.0.1:0"]), "()");

    // No udp grant: UDP is refused while a real UDP socket listens; with a grant the
    // datagram arrives (control).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let target = udp.local_addr().unwrap().to_string();
    let r = f.probe(&["udp", "127.0.0.1:0", &target]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    ok(&f.run("probe-net", &["udp", "127.0.0.1:0", &target]), "1");
    let mut buf = [0u8; 8];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("the granted datagram arrives");
    assert_eq!(&buf[..n], b"x");
    // A component with a udp grant for loopback still cannot reach another address.
    let r = f.run("probe-net", &["udp", "127.0.0.1:0", "10.255.255.1:53"]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
    r.stderr_has("denied `probe-net` net.udp udp://10.255.255.1:53");
    // No lookup grant: name resolution is refused.
    let r = f.probe(&["lookup", "localhost"]);
    assert!(r.stdout.starts_with("err: "), "{}", r.stdout);
}

fn assert_stopped(r: &Run, started: Instant, limit: Duration, message: &str) {
    r.expect(69).stderr_has(message);
    // Stopped within the limit plus a margin for process start and compilation.
    assert!(
        started.elapsed() < limit + Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn limits_stop_hostile_guests_with_the_limit_named() {
    let f = fixture();
    let t = Instant::now();
    assert_stopped(
        &f.probe(&["alloc"]),
        t,
        Duration::ZERO,
        "component `probe` stopped: memory limit of 32MiB exceeded (`limits.memory`: linear memories and tables together)",
    );
    let t = Instant::now();
    assert_stopped(
        &f.probe(&["spin"]),
        t,
        Duration::from_secs(2),
        "component `probe` stopped: timeout of 2s exceeded (`limits.timeout`)",
    );
    let t = Instant::now();
    assert_stopped(
        &f.probe(&["recurse"]),
        t,
        Duration::ZERO,
        "component `probe` stopped: wasm stack of 1024 KiB exhausted",
    );
    let t = Instant::now();
    assert_stopped(
        &f.run("probe-fuel", &["spin"]),
        t,
        Duration::ZERO,
        "component `probe-fuel` stopped: fuel limit of 50000000 exhausted (`limits.fuel`)",
    );
    // Open files: past `limits.files` an open fails (the guest sees an error it can handle);
    // below it, the same opens work.
    let r = f.probe(&["open-many", "/data/a.txt", "5000"]);
    r.expect(0);
    assert!(
        r.stdout.starts_with("err: after 64: "),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    ok(&f.probe(&["open-many", "/data/a.txt", "60"]), "60");
    // Controls: the same components run normally within their limits.
    ok(&f.probe(&["read", "/data/a.txt"]), "\"hello\\n\"");
    let r = f.run("probe-fuel", &["env", "NONE"]);
    r.expect(0);
    assert_eq!(r.stdout.trim(), "err: environment variable not found");
}

#[test]
fn guest_traps_and_exits() {
    let f = fixture();
    f.probe(&["trap"]).expect(69).stderr_has("component `probe` trapped: wasm trap: wasm `unreachable` instruction executed (the guest panicked or aborted)");
    f.probe(&["exit", "0"]).expect(0);
    // wasi:cli/exit in WASI 0.2 carries success or failure only, so any non-zero code is 1.
    f.probe(&["exit", "3"]).expect(1);
}

#[test]
fn a_guest_exit_code_becomes_capgate_exit_code() {
    // A guest that calls `wasi:cli/exit`'s `exit-with-code`, as `wasmtime run` passes it on.
    let exiting = |code: u8| {
        wat::parse_str(format!(
            r#"(component
  (type $et (instance
    (type (func (param "status-code" u8)))
    (export "exit-with-code" (func (type 0)))))
  (import "wasi:cli/exit@0.2.0" (instance $exit (type $et)))
  (alias export $exit "exit-with-code" (func $ewc))
  (core func $cewc (canon lower (func $ewc)))
  (core module $m
    (import "h" "ewc" (func $ewc (param i32)))
    (func (export "run") (result i32) (call $ewc (i32.const {code})) i32.const 0))
  (core instance $hi (export "ewc" (func $cewc)))
  (core instance $i (instantiate $m (with "h" (instance $hi))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $ri (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $ri)))"#
        ))
        .unwrap()
    };
    let sb = Sandbox::new();
    let policy = |v: u32| {
        format!("capgate: 1\nname: exits\nversion: {v}\ncomponents:\n  e:\n    component: e.wasm\n")
    };
    sb.write("e.wasm", exiting(42));
    common::signed_policy(&sb, &[], &policy(1));
    sb.capgate(["sign", "artifact", "e.wasm", "--key", "keys/release.key"])
        .expect(0);
    run_probe(&sb, "e", &[]).expect(42);
    // Control: code 0 is success.
    sb.write("e.wasm", exiting(0));
    sb.capgate([
        "sign",
        "artifact",
        "e.wasm",
        "--key",
        "keys/release.key",
        "--replace",
    ])
    .expect(0);
    common::resign_policy(&sb, &policy(2));
    run_probe(&sb, "e", &[]).expect(0);
}
