//! Linked components: calls between components go through capgate's broker, which authorises
//! each call, keeps each component's grants in its own store, and isolates faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Run, Sandbox, run_probe, run_probe_env, signed_policy};

const POLICY: &str = "capgate: 1
name: linking
version: 1
components:
  client:
    component: vault-client.wasm
    calls:
      - { component: vault, interface: test:secrets/vault, functions: [get-public, crash, count, add] }
  trusted:
    component: vault-client.wasm
    calls:
      - { component: vault, interface: test:secrets/vault }
  chained:
    component: vault-client.wasm
    calls:
      - { component: relay, interface: test:secrets/vault@0.1.0, functions: [get-public] }
  relay:
    component: relay.wasm
    calls:
      - { component: vault, interface: test:secrets/vault, functions: [get-public, get-secret] }
  vault:
    component: vault.wasm
    files: [{ host: secret, guest: /secret }]
    env: { SECRET_TOKEN: env-token-456 }
    stdio: { stderr: closed }
";

fn fixture() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("secret/token.txt", "token-123\n");
    signed_policy(&sb, &["vault", "vault-client", "relay"], POLICY);
    sb
}

#[track_caller]
fn lines(r: &Run, want: &[&str]) {
    r.expect(0);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        want,
        "stderr: {}",
        r.stderr
    );
}

#[test]
fn allowed_calls_return_values_and_a_denied_call_traps_the_caller() {
    let sb = fixture();
    lines(
        &run_probe(&sb, "client", &["public", "add"]),
        &["public: public-value", "add: 42"],
    );
    let r = run_probe(&sb, "client", &["public", "secret", "public"]);
    r.expect(69).stderr_has(
        "component `client` trapped: call from `client` to `vault` test:secrets/vault@0.1.0#get-secret denied: no grant matches (`client.calls[0]` grants only `get-public`, `crash`, `count`, `add` of `test:secrets/vault`)",
    );
    // The call before the denial completed; the secret never reached the caller.
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["public: public-value"]
    );
    assert!(!r.stdout.contains("the-secret-value") && !r.stderr.contains("the-secret-value"));
    // Control: a caller granted the whole interface gets it.
    lines(
        &run_probe(&sb, "trusted", &["secret"]),
        &["secret: the-secret-value"],
    );
}

#[test]
fn the_callees_grants_stay_in_the_callee() {
    let sb = fixture();
    let env = [("SECRET_TOKEN", "host-value")];
    // The caller's own WASI has none of the callee's file or environment grants.
    lines(
        &run_probe_env(&sb, "client", &["own-file", "own-env"], &env),
        &["own-file: Err(NotFound)", "own-env: None"],
    );
    lines(
        &run_probe_env(&sb, "trusted", &["own-file", "own-env"], &env),
        &["own-file: Err(NotFound)", "own-env: None"],
    );
    // Nor can it reach them through a call it is not granted.
    run_probe(&sb, "client", &["vault-file"])
        .expect(69)
        .stderr_has("test:secrets/vault@0.1.0#read-file denied: no grant matches");
    run_probe(&sb, "client", &["vault-env"])
        .expect(69)
        .stderr_has("test:secrets/vault@0.1.0#env denied: no grant matches");
    // Control: the callee's grants work in the callee, for a caller allowed to ask it.
    lines(
        &run_probe_env(&sb, "trusted", &["vault-file", "vault-env"], &env),
        &[
            "vault-file: Ok(\"token-123\\n\")",
            "vault-env: Some(\"env-token-456\")",
        ],
    );
}

#[test]
fn each_link_in_a_chain_is_authorised_on_its_own() {
    let sb = fixture();
    lines(
        &run_probe(&sb, "chained", &["public"]),
        &["public: via relay: public-value"],
    );
    // `relay` may call `get-secret` on the vault, but `chained` may not ask `relay` for it.
    run_probe(&sb, "chained", &["secret"])
        .expect(69)
        .stderr_has("call from `chained` to `relay` test:secrets/vault@0.1.0#get-secret denied: no grant matches");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_callee_is_restarted_and_the_host_keeps_serving() {
    let sb = fixture();
    let trust = capgate::signing::TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let policy = Arc::new(
        capgate::VerifiedPolicy::load(
            &sb.path("policy.yaml"),
            &trust,
            &capgate::signing::StateStore::at(sb.path("state")),
        )
        .unwrap(),
    );
    let host = capgate::Host::new(capgate::HostConfig::new()).unwrap();
    let count = || host.call(&policy, "vault", "test:secrets/vault#count", &[]);
    // One instance serves successive calls (its counter grows)...
    assert_eq!(count().await.unwrap(), ["1"]);
    assert_eq!(count().await.unwrap(), ["2"]);
    // A call whose arguments do not fit runs nothing and costs the instance nothing...
    assert!(
        host.call(
            &policy,
            "vault",
            "test:secrets/vault#add",
            &["\"x\"".into()]
        )
        .await
        .is_err()
    );
    assert!(
        host.call(&policy, "vault", "test:secrets/vault#no-such", &[])
            .await
            .is_err()
    );
    assert_eq!(count().await.unwrap(), ["3"]);
    // ...until it crashes: the call fails cleanly, naming the restart...
    match host
        .call(&policy, "vault", "test:secrets/vault#crash", &[])
        .await
    {
        Err(capgate::RunError::Trap { component, message }) => {
            assert_eq!(component, "vault");
            assert!(
                message.contains("`vault` will be restarted for the next call"),
                "{message}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // ...and the next call gets a fresh instance.
    assert_eq!(count().await.unwrap(), ["1"]);

    // The same through a caller: its call fails, the host and the callee go on.
    match host.run(&policy, "client", &["crash".into()]).await {
        Err(capgate::RunError::Trap { message, .. }) => {
            assert!(
                message.contains(
                    "call from `client` to `vault` test:secrets/vault@0.1.0#crash failed"
                ),
                "{message}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(
        host.run(&policy, "client", &["public".into()])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        count().await.unwrap(),
        ["2"],
        "the runs' vault instances were their own: the host's instance goes on counting"
    );
    assert_eq!(
        host.call(
            &policy,
            "vault",
            "test:secrets/vault#add",
            &["2".into(), "40".into()]
        )
        .await
        .unwrap(),
        ["42"]
    );
}

#[test]
fn calls_within_one_run_reach_the_same_callee_instance() {
    let sb = fixture();
    // The run is one scope: the vault it started keeps its state between its calls...
    lines(
        &run_probe(&sb, "client", &["count", "count", "count"]),
        &["count: 1", "count: 2", "count: 3"],
    );
    // ...and the next run starts from nothing.
    lines(&run_probe(&sb, "client", &["count"]), &["count: 1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callee_reached_through_a_reusable_one_still_belongs_to_the_callers_run() {
    let sb = Sandbox::new();
    sb.write("secret/token.txt", "token-123\n");
    let policy = POLICY
        .replace(
            "functions: [get-public] }",
            "functions: [get-public, count] }",
        )
        .replace(
            "functions: [get-public, get-secret] }",
            "functions: [get-public, get-secret, count] }",
        )
        .replace(
            "  relay:\n    component: relay.wasm\n",
            "  relay:\n    component: relay.wasm\n    reusable: true\n",
        );
    assert!(policy.contains("reusable: true") && policy.contains("get-secret, count"));
    signed_policy(&sb, &["vault", "vault-client", "relay"], &policy);
    let trust = capgate::signing::TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let policy = Arc::new(
        capgate::VerifiedPolicy::load(
            &sb.path("policy.yaml"),
            &trust,
            &capgate::signing::StateStore::at(sb.path("state")),
        )
        .unwrap(),
    );
    let host = capgate::Host::new(capgate::HostConfig::new()).unwrap();
    // Two runs count through the shared relay into the vault...
    for _ in 0..2 {
        assert_eq!(
            host.run(&policy, "chained", &["count".into()])
                .await
                .unwrap(),
            0
        );
    }
    // ...whose instances were the runs' own: the host's (shared) vault instance starts from
    // nothing, and goes on counting.
    let count = || host.call(&policy, "vault", "test:secrets/vault#count", &[]);
    assert_eq!(count().await.unwrap(), ["1"]);
    assert_eq!(count().await.unwrap(), ["2"]);
}

#[test]
fn capgate_call_speaks_wave() {
    let sb = fixture();
    let call = |args: &[&str]| {
        let mut argv = vec!["call", "--policy", "policy.yaml", "--trust", "trust.yaml"];
        argv.extend_from_slice(args);
        sb.capgate(argv)
    };
    lines(
        &call(&["vault", "test:secrets/vault#add", "2", "40"]),
        &["42"],
    );
    lines(
        &call(&[
            "vault",
            "test:secrets/vault@0.1.0#read-file",
            "\"/secret/token.txt\"",
        ]),
        &["ok(\"token-123\\n\")"],
    );
    lines(
        &call(&["vault", "test:secrets/vault#read-file", "\"/etc/passwd\""]),
        &["err(\"NotFound: No such file or directory (os error 44)\")"],
    );
    call(&["vault", "test:secrets/vault#add", "2"])
        .expect(64)
        .stderr_has("takes 2 arguments (a, b), 1 given");
    call(&["vault", "test:secrets/vault#add", "2", "\"x\""])
        .expect(64)
        .stderr_has("argument `b`: `\"x\"` is not a valid WAVE value");
    call(&["vault", "test:secrets/vault#nope"])
        .expect(64)
        .stderr_has("has no exported function `nope`");
    call(&["vault", "test:secrets/vault#crash"])
        .expect(69)
        .stderr_has("the guest panicked or aborted");
}

#[test]
fn bad_links_are_refused_before_anything_runs() {
    let cases = [
        (
            "nobody provides the import",
            "  client:\n    component: vault-client.wasm\n  vault:\n    component: vault.wasm\n",
            "component `client`: import `test:secrets/vault@0.1.0` cannot be linked: no `calls` entry of the policy names this interface",
        ),
        (
            "the callee does not export it",
            "  client:\n    component: vault-client.wasm\n    calls: [{ component: other, interface: test:secrets/vault }]\n  other:\n    component: vault-client.wasm\n",
            "cannot be linked: component `other` does not export it",
        ),
        (
            "two callees could provide it",
            "  client:\n    component: vault-client.wasm\n    calls: [{ component: vault, interface: test:secrets/vault }, { component: relay, interface: test:secrets/vault }]\n  relay:\n    component: relay.wasm\n    calls: [{ component: vault, interface: test:secrets/vault }]\n  vault:\n    component: vault.wasm\n",
            "ambiguous: `calls` names `relay` and `vault` for it; keep one",
        ),
        (
            "a cycle",
            "  client:\n    component: vault-client.wasm\n    calls: [{ component: a, interface: test:secrets/vault }]\n  a:\n    component: relay.wasm\n    calls: [{ component: b, interface: test:secrets/vault }]\n  b:\n    component: relay.wasm\n    calls: [{ component: a, interface: test:secrets/vault }]\n",
            "the links form a cycle: a → b → a",
        ),
    ];
    for (name, components, message) in cases {
        let sb = Sandbox::new();
        signed_policy(
            &sb,
            &["vault", "vault-client", "relay"],
            &format!("capgate: 1\nname: bad\nversion: 1\ncomponents:\n{components}"),
        );
        let r = run_probe(&sb, "client", &["public"]);
        assert_eq!(r.code, 65, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(message),
            "{name}: stderr lacks {message:?}:\n{}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{name}: the client ran: {}", r.stdout);
    }
}

/// A caller that imports `test:secrets/vault@0.1.0` with `get-public` returning `result`
/// (`string`, as the vault has it, or `u32`), and exports `go: func() -> u32` (returning 1,
/// without calling anything).
fn caller_expecting(result: wasm_encoder::PrimitiveValType) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ComponentBuilder, ComponentExportKind, ComponentTypeRef, ComponentValType,
        ExportKind, ExportSection, Function, FunctionSection, InstanceType, Instruction, Module,
        PrimitiveValType, TypeSection, ValType,
    };
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    module.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    module.section(&funcs);
    let mut exports = ExportSection::new();
    exports.export("go", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    let mut f = Function::new([]);
    f.instruction(&Instruction::I32Const(1));
    f.instruction(&Instruction::End);
    code.function(&f);
    module.section(&code);

    let mut c = ComponentBuilder::default();
    let mut vault = InstanceType::new();
    vault
        .ty()
        .function()
        .params(std::iter::empty::<(&str, ComponentValType)>())
        .result(Some(ComponentValType::Primitive(result)));
    vault.export("get-public", ComponentTypeRef::Func(0));
    let vault = c.type_instance(None, &vault);
    c.import(
        "test:secrets/vault@0.1.0",
        ComponentTypeRef::Instance(vault),
    );
    let m = c.core_module(None, &module);
    let inst = c.core_instantiate(None, m, []);
    let core = c.core_alias_export(None, inst, "go", ExportKind::Func);
    let (ty, mut enc) = c.type_function(None);
    enc.params(std::iter::empty::<(&str, ComponentValType)>())
        .result(Some(ComponentValType::Primitive(PrimitiveValType::U32)));
    let go = c.lift_func(None, core, ty, []);
    c.export("go", ComponentExportKind::Func, go, None);
    c.finish()
}

#[test]
fn link_types_are_checked_before_anything_runs() {
    let policy = "capgate: 1\nname: types\nversion: 1\ncomponents:\n  caller:\n    component: caller.wasm\n    calls:\n      - { component: vault, interface: test:secrets/vault, functions: [get-public] }\n  vault:\n    component: vault.wasm\n";
    let call = |sb: &Sandbox| {
        sb.capgate([
            "call",
            "--policy",
            "policy.yaml",
            "--trust",
            "trust.yaml",
            "caller",
            "go",
        ])
    };
    // A sandbox with the vault and a signed caller expecting `get-public` to return `result`.
    let with_caller = |result| {
        let sb = Sandbox::new();
        sb.write("caller.wasm", caller_expecting(result));
        signed_policy(&sb, &["vault"], policy);
        sb.capgate([
            "sign",
            "artifact",
            "caller.wasm",
            "--key",
            "keys/release.key",
        ])
        .expect(0);
        sb
    };
    // The attack: a caller built against another `get-public` (returning `u32`).
    call(&with_caller(wasm_encoder::PrimitiveValType::U32))
        .expect(65)
        .stderr_has("import `test:secrets/vault@0.1.0` cannot be linked")
        .stderr_has("function `get-public` has another type in `vault`");
    // Control: the same caller built against the vault's `get-public` (returning `string`).
    let sb = with_caller(wasm_encoder::PrimitiveValType::String);
    call(&sb).expect(0).stdout_has("1");
}

/// A host and the vault alone under `limits.instances: INSTANCES`, with a read-write `/meet`
/// where concurrent `gather` calls meet.
fn pooled_vault(instances: u32) -> (Sandbox, capgate::Host, Arc<capgate::VerifiedPolicy>) {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("meet")).unwrap();
    signed_policy(
        &sb,
        &["vault"],
        &format!(
            "capgate: 1\nname: pool\nversion: 1\ncomponents:\n  vault:\n    component: vault.wasm\n    files: [{{ host: meet, guest: /meet, access: read-write }}]\n    limits: {{ instances: {instances}, timeout: 30s }}\n"
        ),
    );
    let trust = capgate::signing::TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let policy = capgate::VerifiedPolicy::load(
        &sb.path("policy.yaml"),
        &trust,
        &capgate::signing::StateStore::at(sb.path("state")),
    )
    .unwrap();
    let host = capgate::Host::new(capgate::HostConfig::new()).unwrap();
    (sb, host, Arc::new(policy))
}

/// `gather("/meet", n, ms)` on the vault.
async fn gather(
    host: &capgate::Host,
    policy: &Arc<capgate::VerifiedPolicy>,
    n: u32,
    ms: u32,
) -> u32 {
    let out = host
        .call(
            policy,
            "vault",
            "test:secrets/vault#gather",
            &["\"/meet\"".into(), n.to_string(), ms.to_string()],
        )
        .await
        .unwrap();
    out[0].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_into_one_callee_run_on_up_to_limits_instances_instances() {
    // Three calls at once meet in `/meet` when three instances may run...
    let (_sb, host, policy) = pooled_vault(3);
    let met = tokio::join!(
        gather(&host, &policy, 3, 20_000),
        gather(&host, &policy, 3, 20_000),
        gather(&host, &policy, 3, 20_000),
    );
    assert_eq!(met, (3, 3, 3), "the three calls ran at the same time");

    // ...and never more than `limits.instances` run: with two, two calls wait for a third that
    // cannot start until one of them has returned.
    let (_sb, host, policy) = pooled_vault(2);
    let (a, b, c) = tokio::join!(
        gather(&host, &policy, 3, 1_500),
        gather(&host, &policy, 3, 1_500),
        gather(&host, &policy, 3, 1_500),
    );
    // The first call to give up saw only two; a later one may see the third's file.
    let met = [a, b, c];
    assert_eq!(
        met.iter().min(),
        Some(&2),
        "{met:?}: at most two calls ran at once"
    );
    assert_eq!(
        met.iter().max(),
        Some(&3),
        "{met:?}: the third call ran after all"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_holding_the_callee_does_not_starve_other_callers() {
    let (_sb, host, policy) = pooled_vault(2);
    let host = Arc::new(host);
    // One caller keeps a call busy in the callee (a gathering no one else joins)...
    let busy = tokio::spawn({
        let (host, policy) = (host.clone(), policy.clone());
        async move { gather(&host, &policy, 99, 8_000).await }
    });
    // ...while another caller's calls are answered, one after another, before it returns.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 0..5u32 {
        let sum = host
            .call(
                &policy,
                "vault",
                "test:secrets/vault#add",
                &[i.to_string(), "40".into()],
            )
            .await
            .unwrap();
        assert_eq!(sum, [(i + 40).to_string()]);
    }
    assert!(
        !busy.is_finished(),
        "the other caller's calls waited for the busy one"
    );
    assert_eq!(busy.await.unwrap(), 1);
}
