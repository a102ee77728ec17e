//! capgate's cost over its baselines, each measured in the same run: `cargo bench --bench
//! overhead`. Prints one table of medians and ratios (SPEC §7); see the README's Performance
//! section for the figures and the machine.
//!
//! Each figure is the median over 21 samples; each sample times a batch of iterations long
//! enough (about 20 ms) for the clock to be exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capgate::audit::{AuditSink, Entry, JsonlOptions, JsonlSink};
use capgate::authz::{Action, Request};
use capgate::signing::{SecretKey, Sha256, TrustRoot};

const SAMPLES: usize = 21;

/// A batch size for `f` long enough (about 20 ms) for the clock to be exact.
fn calibrate(f: &mut impl FnMut()) -> u32 {
    let mut batch = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() >= Duration::from_millis(20) || batch >= 1 << 24 {
            return batch;
        }
        batch *= 2;
    }
}

/// The time of one call of `f`, averaged over a batch.
fn sample(f: &mut impl FnMut(), batch: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..batch {
        f();
    }
    t.elapsed() / batch
}

fn median_of(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Median time of one call of `f`.
fn median(mut f: impl FnMut()) -> Duration {
    let batch = calibrate(&mut f);
    median_of((0..SAMPLES).map(|_| sample(&mut f, batch)).collect())
}

/// Median times of one call of `a` and of `b`, sampled in turn, so that the machine getting
/// faster or slower during the run affects both alike.
fn paired(mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (ba, bb) = (calibrate(&mut a), calibrate(&mut b));
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        sa.push(sample(&mut a, ba));
        sb.push(sample(&mut b, bb));
    }
    (median_of(sa), median_of(sb))
}

struct Row {
    figure: &'static str,
    ours: Duration,
    baseline: Duration,
    baseline_name: &'static str,
    target: f64,
    /// `true` when the figure is a throughput (the ratio must be at least the target), `false`
    /// for a time (at most).
    higher_is_better: bool,
}

fn row(
    figure: &'static str,
    ours: Duration,
    baseline_name: &'static str,
    baseline: Duration,
    target: f64,
    higher_is_better: bool,
) -> Row {
    Row {
        figure,
        ours,
        baseline,
        baseline_name,
        target,
        higher_is_better,
    }
}

impl Row {
    fn ratio(&self) -> f64 {
        ratio(self.ours, self.baseline, self.higher_is_better)
    }

    fn meets(&self) -> bool {
        if self.higher_is_better {
            self.ratio() >= self.target
        } else {
            self.ratio() <= self.target
        }
    }
}

/// ours ÷ baseline for times; baseline time ÷ ours for throughput figures.
fn ratio(ours: Duration, baseline: Duration, higher_is_better: bool) -> f64 {
    if higher_is_better {
        baseline.as_secs_f64() / ours.as_secs_f64()
    } else {
        ours.as_secs_f64() / baseline.as_secs_f64()
    }
}

fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A policy of `components` components, each with `grants` connect grants and a lookup grant,
/// and one rule, loaded without signatures (verification is measured separately).
fn policy(dir: &Path, components: usize, grants: usize) -> capgate::VerifiedPolicy {
    std::fs::write(dir.join("app.wasm"), b"\0asm").unwrap();
    let mut yaml = String::from("capgate: 1\nname: bench\nversion: 1\ncomponents:\n");
    for c in 0..components {
        let connect: Vec<String> = (0..grants)
            .map(|g| format!("tcp://10.{}.{}.0/24:{}", c % 250, g % 250, 1000 + g))
            .collect();
        yaml.push_str(&format!(
            "  c{c}:\n    component: app.wasm\n    network:\n      connect: [{}]\n      lookup: [db.internal]\n",
            connect.join(", ")
        ));
    }
    // One rule, so every uncached decision goes through Cedar (a policy without rules is
    // decided by the grant matchers alone).
    std::fs::write(
        dir.join("rules.cedar"),
        "@id(\"no-9\")\nforbid (principal, action == Action::\"net.connect\", resource) when { context.port == 9 };\n",
    )
    .unwrap();
    yaml = yaml.replacen("components:\n", "rules: [rules.cedar]\ncomponents:\n", 1);
    let path = dir.join(format!("policy-{components}-{grants}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    capgate::danger::load_unsigned_policy(&path).expect("bench policy")
}

fn authorisation() -> (Row, Row) {
    let dir = scratch();
    let p = policy(dir.path(), 1, 20);
    let req = Request::Socket {
        action: Action::NetConnect,
        addr: "10.0.7.9:1007".parse().unwrap(),
    };
    let authority = p.authority();
    assert!(authority.decide("c0", &req).allowed);

    // The baseline: one direct Cedar evaluation over 21 policies of the same shape.
    use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request as CReq};
    let mut text = String::new();
    for g in 0..20 {
        text.push_str(&format!(
            "@id(\"c0.network.connect[{g}]\")\npermit (principal == Component::\"c0\", action == Action::\"net.connect\", resource) when {{ context.grants.contains(\"c0.network.connect[{g}]\") }};\n"
        ));
    }
    text.push_str("@id(\"c0.network.lookup[0]\")\npermit (principal == Component::\"c0\", action == Action::\"net.lookup\", resource) when { context.grants.contains(\"c0.network.lookup[0]\") };\n");
    let set: PolicySet = text.parse().unwrap();
    let uid = |s: &str| s.parse::<EntityUid>().unwrap();
    let context = Context::from_json_str(
        r#"{"grants": ["c0.network.connect[7]"], "ip": {"__extn": {"fn": "ip", "arg": "10.0.7.9"}}, "port": 1007}"#,
        None,
    )
    .unwrap();
    let creq = CReq::new(
        uid("Component::\"c0\""),
        uid("Action::\"net.connect\""),
        uid("Endpoint::\"tcp://10.0.7.9:1007\""),
        context,
        None,
    )
    .unwrap();
    let entities = Entities::empty();
    let authorizer = Authorizer::new();
    assert_eq!(
        authorizer.is_authorized(&creq, &set, &entities).decision(),
        cedar_policy::Decision::Allow
    );
    let (cached, direct) = paired(
        || {
            black_box(authority.decide(black_box("c0"), black_box(&req)));
        },
        || {
            black_box(authorizer.is_authorized(black_box(&creq), &set, &entities));
        },
    );

    // One uncached decision with 100 components in the policy vs with 1.
    let one = p;
    let hundred = policy(dir.path(), 100, 20);
    let (uncached_hundred, uncached_one) = paired(
        || {
            black_box(hundred.authority().decide_uncached("c0", black_box(&req)));
        },
        || {
            black_box(one.authority().decide_uncached("c0", black_box(&req)));
        },
    );
    (
        row(
            "authorisation of a repeated request",
            cached,
            "one direct Cedar is_authorized",
            direct,
            0.02,
            false,
        ),
        row(
            "one decision in a policy of 100 components",
            uncached_hundred,
            "in a policy of 1 component",
            uncached_one,
            1.5,
            false,
        ),
    )
}

/// Verifying a signed artifact of `size` bytes against the SHA-256 of the same file.
fn verify_vs_sha256(size: u32) -> (Duration, Duration) {
    let dir = scratch();
    let key = SecretKey::generate();
    std::fs::write(dir.path().join("k.pub"), key.public().to_pem()).unwrap();
    std::fs::write(
        dir.path().join("trust.yaml"),
        "capgate-trust: 1\nkeys: { k: k.pub }\nroles:\n  artifact: { keys: [k], threshold: 1 }\n",
    )
    .unwrap();
    let artifact = dir.path().join("big.wasm");
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&artifact, &bytes).unwrap();
    capgate::signing::sign_artifact(&artifact, &key).unwrap();
    let trust = TrustRoot::load(&dir.path().join("trust.yaml")).unwrap();
    let req = trust.role(capgate::signing::Role::Artifact);
    // The baseline: the same file's SHA-256 computed with `sha256sum`'s algorithm in
    // process (reading the file, hashing it), so process start-up does not count.
    paired(
        || {
            black_box(capgate::signing::verify_artifact_file(&artifact, &trust, &req).unwrap());
        },
        || {
            let f = std::fs::File::open(&artifact).unwrap();
            black_box(Sha256::of_reader(f).unwrap());
        },
    )
}

fn verification() -> Row {
    let (ours, baseline) = verify_vs_sha256(10 << 20);
    row(
        "verify a 10 MiB signed artifact",
        ours,
        "SHA-256 of the same file",
        baseline,
        1.10,
        false,
    )
}

fn audit_append() -> Row {
    let dir = scratch();
    let p = policy(dir.path(), 1, 1);
    let sink = JsonlSink::open(dir.path().join("audit.jsonl"), JsonlOptions::default()).unwrap();
    let record = capgate::audit::DecisionRecord {
        component: "c0".into(),
        sha256: Sha256::of(b"x").to_string(),
        action: "net.connect".into(),
        resource: "tcp://10.0.7.9:1007".into(),
        context: serde_json::Map::new(),
        decision: capgate::audit::Verdict::Deny,
        reasons: vec![],
        errors: vec![],
        policy: capgate::audit::PolicyRef {
            name: p.policy().name.clone(),
            version: 1,
            sha256: p.policy().sha256.to_string(),
        },
        count: None,
        until: None,
        enforced: None,
    };
    let entry = Entry::Decision {
        ts: capgate::audit::timestamp(),
        record: Box::new(record.clone()),
    };
    // The baseline: the same records as JSON lines with a sequence number and time but no
    // chain, written the same way (one write per line, synced every 64 lines).
    use std::io::Write as _;
    let mut plain = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("plain.jsonl"))
        .unwrap();
    let mut seq = 0u64;
    let (ours, baseline) = paired(
        || sink.append(black_box(&entry)).unwrap(),
        || {
            seq += 1;
            let mut line = serde_json::to_vec(&serde_json::json!({"seq": seq, "ts": "2026-11-24T18:00:00.000000Z", "record": &record})).unwrap();
            line.push(b'\n');
            plain.write_all(&line).unwrap();
            if seq.is_multiple_of(64) {
                plain.sync_data().unwrap();
            }
        },
    );
    row(
        "audit records per second, batch durability",
        ours,
        "the same JSON lines, no chain",
        baseline,
        0.80,
        true,
    )
}

/// A raw wasmtime engine with the features capgate's limits use (epoch interruption, fuel).
fn bench_engine() -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true).consume_fuel(true);
    wasmtime::Engine::new(&config).unwrap()
}

/// The `hello` guest under a policy that closes its output, on one capgate host; and the same
/// component under raw wasmtime with an equivalent context (same engine features: epoch
/// interruption and fuel, which capgate's limits use).
struct Hello {
    rt: tokio::runtime::Runtime,
    policy: Arc<capgate::VerifiedPolicy>,
    host: Arc<capgate::Host>,
    engine: wasmtime::Engine,
    pre: wasmtime_wasi::p2::bindings::CommandPre<Raw>,
    _dir: tempfile::TempDir,
}

struct Raw {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for Raw {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl Hello {
    fn new() -> Self {
        let dir = scratch();
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/prebuilt/hello.wasm");
        std::fs::copy(&wasm, dir.path().join("hello.wasm")).unwrap();
        std::fs::write(
            dir.path().join("policy.yaml"),
            "capgate: 1\nname: bench\nversion: 1\ncomponents:\n  hello:\n    component: hello.wasm\n    stdio: { stdout: closed, stderr: closed }\n",
        )
        .unwrap();
        let policy = Arc::new(
            capgate::danger::load_unsigned_policy(&dir.path().join("policy.yaml")).unwrap(),
        );
        let host = Arc::new(capgate::Host::new(capgate::HostConfig::new()).unwrap());
        let engine = bench_engine();
        let component = wasmtime::component::Component::from_file(&engine, &wasm).unwrap();
        let mut linker = wasmtime::component::Linker::<Raw>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        let pre = wasmtime_wasi::p2::bindings::CommandPre::new(
            linker.instantiate_pre(&component).unwrap(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            rt,
            policy,
            host,
            engine,
            pre,
            _dir: dir,
        }
    }

    fn raw_store(engine: &wasmtime::Engine) -> wasmtime::Store<Raw> {
        let ctx = wasmtime_wasi::WasiCtxBuilder::new()
            .args(&["hello"])
            .build();
        let mut store = wasmtime::Store::new(
            engine,
            Raw {
                ctx,
                table: wasmtime::component::ResourceTable::new(),
            },
        );
        store.set_fuel(u64::MAX).unwrap();
        store.set_epoch_deadline(1_000_000);
        store
    }
}

fn instantiation(h: &Hello) -> Row {
    h.rt.block_on(async { h.host.prepare(&h.policy, "hello", &[]).await.map(drop) })
        .unwrap();
    let (ours, baseline) = paired(
        || {
            h.rt.block_on(async { h.host.prepare(&h.policy, "hello", &[]).await.map(drop) })
                .unwrap()
        },
        || {
            h.rt.block_on(async {
                let mut store = Hello::raw_store(&h.engine);
                black_box(h.pre.instantiate_async(&mut store).await.unwrap());
            })
        },
    );
    row(
        "instantiate a component with its policy applied",
        ours,
        "raw InstancePre::instantiate, equivalent WasiCtx",
        baseline,
        1.10,
        false,
    )
}

/// Linked components: `client` calling `add` N times in one run, through `depth - 1` relays
/// to `vault` (depth 1: straight to the vault).
struct Linked {
    rt: tokio::runtime::Runtime,
    policy: Arc<capgate::VerifiedPolicy>,
    host: capgate::Host,
    engine: wasmtime::Engine,
    client: wasmtime::component::Component,
    linker: wasmtime::component::Linker<Raw>,
    _dir: tempfile::TempDir,
}

/// The functions of `test:secrets/vault` (tests/guests/wit/vault.wit).
const VAULT_FUNCTIONS: [&str; 7] = [
    "get-public",
    "get-secret",
    "read-file",
    "env",
    "crash",
    "count",
    "add",
];

/// The callee of the raw baseline: one instance in its own store, and its functions by name.
struct RawCallee {
    store: wasmtime::Store<Raw>,
    funcs: std::collections::HashMap<String, wasmtime::component::Func>,
}

impl Linked {
    fn new(depth: usize) -> Self {
        let dir = scratch();
        let prebuilt = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/prebuilt");
        for f in ["vault.wasm", "vault-client.wasm", "relay.wasm"] {
            std::fs::copy(prebuilt.join(f), dir.path().join(f)).unwrap();
        }
        let quiet = "    stdio: { stdout: closed, stderr: closed }\n";
        let calls = |next: &str| {
            format!(
                "    calls: [{{ component: {next}, interface: test:secrets/vault, functions: [add] }}]\n"
            )
        };
        let hop = |i: usize| {
            if i + 1 < depth {
                format!("r{}", i + 1)
            } else {
                "vault".into()
            }
        };
        let mut yaml = String::from("capgate: 1\nname: bench\nversion: 1\ncomponents:\n");
        yaml += &format!(
            "  client:\n    component: vault-client.wasm\n{quiet}{}",
            calls(&hop(0))
        );
        for i in 1..depth {
            yaml += &format!(
                "  r{i}:\n    component: relay.wasm\n{quiet}{}",
                calls(&hop(i))
            );
        }
        yaml += &format!("  vault:\n    component: vault.wasm\n{quiet}");
        std::fs::write(dir.path().join("policy.yaml"), yaml).unwrap();
        let policy = Arc::new(
            capgate::danger::load_unsigned_policy(&dir.path().join("policy.yaml")).unwrap(),
        );
        // Audited as `capgate run --audit` does by default (level `deny`: allowed calls are
        // decided and checked against the level, denials written).
        let host = capgate::Host::new(
            capgate::HostConfig::new().audit_log(dir.path().join("audit.jsonl")),
        )
        .unwrap();

        // The baseline: the same two components under raw wasmtime, the client's `vault`
        // imports forwarded to the vault's store with the dynamic API and no checks.
        let engine = bench_engine();
        let vault = wasmtime::component::Component::from_file(&engine, prebuilt.join("vault.wasm"))
            .unwrap();
        let client =
            wasmtime::component::Component::from_file(&engine, prebuilt.join("vault-client.wasm"))
                .unwrap();
        let mut linker = wasmtime::component::Linker::<Raw>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let iface = "test:secrets/vault@0.1.0";
        let callee = rt.block_on(async {
            let mut store = Hello::raw_store(&engine);
            let instance = linker.instantiate_async(&mut store, &vault).await.unwrap();
            let parent = instance.get_export_index(&mut store, None, iface).unwrap();
            let mut funcs = std::collections::HashMap::new();
            for name in VAULT_FUNCTIONS {
                let i = instance
                    .get_export_index(&mut store, Some(&parent), name)
                    .unwrap();
                funcs.insert(name.to_owned(), instance.get_func(&mut store, i).unwrap());
            }
            Arc::new(tokio::sync::Mutex::new(RawCallee { store, funcs }))
        });
        let mut client_linker = linker.clone();
        let mut inst = client_linker.instance(iface).unwrap();
        for name in VAULT_FUNCTIONS {
            let (callee, name) = (callee.clone(), name.to_owned());
            inst.func_new_async(&name.clone(), move |_store, _ty, params, results| {
                let (callee, name) = (callee.clone(), name.clone());
                Box::new(async move {
                    let mut c = callee.lock().await;
                    let c = &mut *c;
                    c.funcs[&name]
                        .call_async(&mut c.store, params, results)
                        .await
                })
            })
            .unwrap();
        }
        Self {
            rt,
            policy,
            host,
            engine,
            client,
            linker: client_linker,
            _dir: dir,
        }
    }

    fn ours(&self, calls: u32) {
        let args = ["add-many".to_owned(), calls.to_string()];
        let status = self
            .rt
            .block_on(self.host.run(&self.policy, "client", &args))
            .unwrap();
        assert_eq!(status, 0);
    }

    fn raw(&self, calls: u32) {
        self.rt.block_on(async {
            let mut store = Hello::raw_store(&self.engine);
            store.data_mut().ctx = wasmtime_wasi::WasiCtxBuilder::new()
                .args(&["client", "add-many", &calls.to_string()])
                .build();
            let cmd = wasmtime_wasi::p2::bindings::Command::instantiate_async(
                &mut store,
                &self.client,
                &self.linker,
            )
            .await
            .unwrap();
            cmd.wasi_cli_run()
                .call_run(&mut store)
                .await
                .unwrap()
                .unwrap();
        });
    }
}

/// One call through the links of `l`: a run making N calls minus a run making none, over N.
fn per_call(l: &Linked, run: impl Fn(&Linked, u32)) -> Duration {
    const N: u32 = 50_000;
    run(l, 1);
    let (many, none) = paired(|| run(l, N), || run(l, 0));
    many.saturating_sub(none) / N
}

fn brokered_call() -> Row {
    let l = Linked::new(1);
    row(
        "brokered call between two linked components (authorised + audited)",
        per_call(&l, Linked::ours),
        "the same call forwarded with the dynamic API, no checks",
        per_call(&l, Linked::raw),
        1.30,
        false,
    )
}

/// How the figures grow: with policy size, artifact size and link depth.
fn curves() {
    println!("\n### Policy size (one component, N connect grants and N Cedar rules)\n");
    println!(
        "| N | load (parse, compile, validate) | uncached decision | Cedar over grants and rules together | cached decision |"
    );
    println!("|---|---|---|---|---|");
    let req = Request::Socket {
        action: Action::NetConnect,
        addr: "10.0.7.9:1007".parse().unwrap(),
    };
    for n in [10, 100, 1000] {
        let dir = scratch();
        let path = sized_policy(dir.path(), n);
        let load = median(|| {
            black_box(capgate::danger::load_unsigned_policy(&path).unwrap());
        });
        let p = capgate::danger::load_unsigned_policy(&path).unwrap();
        assert!(p.authority().decide("c0", &req).allowed);
        let (uncached, whole) = paired(
            || {
                black_box(p.authority().decide_uncached("c0", black_box(&req)));
            },
            || {
                black_box(p.authority().decide_reference("c0", black_box(&req)));
            },
        );
        let cached = median(|| {
            black_box(p.authority().decide("c0", black_box(&req)));
        });
        println!(
            "| {n} | {} | {} | {} | {} |",
            show(load),
            show(uncached),
            show(whole),
            show(cached)
        );
    }
    println!("\n### Artifact size (verify ÷ SHA-256 of the same file)\n");
    println!("| size | verify | SHA-256 | ratio |\n|---|---|---|---|");
    for (label, size) in [
        ("100 KiB", 100 << 10),
        ("1 MiB", 1 << 20),
        ("10 MiB", 10 << 20),
    ] {
        let (ours, base) = verify_vs_sha256(size);
        println!(
            "| {label} | {} | {} | {:.3} |",
            show(ours),
            show(base),
            ratio(ours, base, false)
        );
    }
    println!(
        "\n### Link depth (one call from the client, through depth - 1 relays, to the vault)\n"
    );
    println!("| depth | brokered | forwarded, no checks (depth 1) | per hop |\n|---|---|---|---|");
    let raw = per_call(&Linked::new(1), Linked::raw);
    for depth in [1, 2, 4, 8] {
        let ours = per_call(&Linked::new(depth), Linked::ours);
        println!(
            "| {depth} | {} | {} | {} |",
            show(ours),
            show(raw),
            show(ours / depth as u32)
        );
    }
}

/// A policy with one component holding `n` connect grants, and `n` Cedar rules (forbids on
/// ports no grant uses, so each is evaluated and none decides).
fn sized_policy(dir: &Path, n: usize) -> std::path::PathBuf {
    std::fs::write(dir.join("app.wasm"), b"\0asm").unwrap();
    let connect: Vec<String> = (0..n)
        .map(|g| format!("tcp://10.{}.{}.0/24:{}", g / 250, g % 250, 1000 + g))
        .collect();
    let rules: String = (0..n)
        .map(|i| {
            format!(
                "@id(\"r{i}\")\nforbid (principal, action == Action::\"net.connect\", resource) when {{ context.port == {} }};\n",
                50000 + i
            )
        })
        .collect();
    std::fs::write(dir.join("rules.cedar"), rules).unwrap();
    let yaml = format!(
        "capgate: 1\nname: bench\nversion: 1\nrules: [rules.cedar]\ncomponents:\n  c0:\n    component: app.wasm\n    network:\n      connect: [{}]\n",
        connect.join(", ")
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A full run of `hello` on a thread's own runtime.
type RunOnce = Arc<dyn Fn(&tokio::runtime::Runtime) + Send + Sync>;

/// Runs `hello` `n` times on each of `threads` threads (each with its own single-threaded
/// runtime, as a server's workers would have); the time per run.
fn throughput(threads: usize, n: usize, one: RunOnce) -> Duration {
    let start = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (one, start) = (one.clone(), start.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                start.wait();
                for _ in 0..n {
                    one(&rt);
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed() / (threads * n) as u32
}

/// 2-thread over 1-thread throughput of `f`: the median of five measurements.
fn speedup(f: &RunOnce) -> f64 {
    const N: usize = 2000;
    let mut ratios: Vec<f64> = (0..5)
        .map(|_| {
            let one = throughput(1, N, f.clone());
            let two = throughput(2, N / 2, f.clone());
            one.as_secs_f64() / two.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[2]
}

fn raw_run(engine: wasmtime::Engine, pre: wasmtime_wasi::p2::bindings::CommandPre<Raw>) -> RunOnce {
    Arc::new(move |rt| {
        rt.block_on(async {
            let mut store = Hello::raw_store(&engine);
            let cmd = pre.instantiate_async(&mut store).await.unwrap();
            cmd.wasi_cli_run()
                .call_run(&mut store)
                .await
                .unwrap()
                .unwrap();
        });
    })
}

/// Speed-ups with two threads: capgate, raw wasmtime, and raw wasmtime with the pooling
/// allocator.
fn scaling(h: &Hello) -> (f64, f64, f64) {
    let (host, policy) = (h.host.clone(), h.policy.clone());
    let ours: RunOnce = Arc::new(move |rt| {
        assert_eq!(rt.block_on(host.run(&policy, "hello", &[])).unwrap(), 0);
    });
    let raw = raw_run(h.engine.clone(), h.pre.clone());
    let pooled = {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(64)
            .total_core_instances(256)
            .total_memories(64)
            .total_tables(64)
            .total_stacks(64)
            .max_memory_size(256 << 20);
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).unwrap();
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/prebuilt/hello.wasm");
        let component = wasmtime::component::Component::from_file(&engine, wasm).unwrap();
        let mut linker = wasmtime::component::Linker::<Raw>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        let pre = wasmtime_wasi::p2::bindings::CommandPre::new(
            linker.instantiate_pre(&component).unwrap(),
        )
        .unwrap();
        raw_run(engine, pre)
    };
    // Warm every path first (caches, lazily built links).
    for f in [&ours, &raw, &pooled] {
        throughput(1, 20, f.clone());
    }
    (speedup(&ours), speedup(&raw), speedup(&pooled))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, briefly.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // Other arguments pick figures by name: `cargo bench --bench overhead -- broker`.
    let picked: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let want = |name: &str| picked.is_empty() || picked.iter().any(|p| name.contains(p.as_str()));
    let hello = Hello::new();
    let mut rows = Vec::new();
    if want("instantiate") {
        rows.push(instantiation(&hello));
    }
    if want("broker") {
        rows.push(brokered_call());
    }
    if want("authorisation") {
        let (repeated, hundred) = authorisation();
        rows.extend([repeated, hundred]);
    }
    if want("verify") {
        rows.push(verification());
    }
    if want("audit") {
        rows.push(audit_append());
    }
    let scaled = want("threads").then(|| scaling(&hello));
    let curves_wanted = want("curves");
    println!("\n| figure | ours | baseline | ratio | target | met |\n|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {}: {} | {:.3} | {} {} | {} |",
            r.figure,
            show(r.ours),
            r.baseline_name,
            show(r.baseline),
            r.ratio(),
            if r.higher_is_better { "≥" } else { "≤" },
            r.target,
            if r.meets() { "yes" } else { "NO" }
        );
    }
    if let Some((ours_speedup, raw_speedup, pooled_speedup)) = scaled {
        let scale = ours_speedup / raw_speedup;
        println!(
            "| 2 threads ÷ 1 thread throughput, full path | speed-up {ours_speedup:.2} | raw wasmtime's speed-up {raw_speedup:.2} | {scale:.3} | ≥ 0.9 | {} |",
            if scale >= 0.9 { "yes" } else { "NO" }
        );
        println!(
            "\nFor reference: raw wasmtime with the pooling allocator speeds up {pooled_speedup:.2} times with two threads."
        );
    }
    println!("\n`capgate run` against `wasmtime run` end to end: benches/e2e.sh.");
    if curves_wanted {
        curves();
    }
}
