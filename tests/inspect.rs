//! `capgate inspect`: a component's imports and exports, compared with a policy's grants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sandbox, guests};

#[test]
fn inspect_lists_imports_and_what_the_policy_grants() {
    let sb = Sandbox::new();
    std::fs::copy(guests::guest("probe"), sb.path("probe.wasm")).unwrap();
    std::fs::create_dir_all(sb.path("data")).unwrap();
    sb.write(
        "p.yaml",
        "capgate: 1\nname: i\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n    files: [{ host: data, guest: /data }]\n    http: [https://api.example.com]\n",
    );
    // Without a policy: the component's interface only.
    let plain = sb.capgate(["inspect", "probe.wasm"]);
    plain
        .expect(0)
        .stdout_has("imports:")
        .stdout_has("exports:\n  wasi:cli/run@");
    assert!(!plain.stdout.contains("granted"), "{}", plain.stdout);

    let r = sb.capgate([
        "inspect",
        "probe.wasm",
        "--policy",
        "p.yaml",
        "--component",
        "probe",
    ]);
    r.expect(0);
    for (import, note) in [
        (
            "wasi:filesystem/preopens@",
            "granted: 1 preopened directory",
        ),
        ("wasi:http/outgoing-handler@", "granted: 1 HTTP grant"),
        (
            "wasi:sockets/tcp@",
            "linked, every use denied: no `network.connect` or `network.bind` grant",
        ),
        (
            "wasi:sockets/ip-name-lookup@",
            "linked, every use denied: no `network.lookup` grant",
        ),
        (
            "wasi:cli/stdin@",
            "linked, every use denied: stdin is closed",
        ),
        ("wasi:clocks/wall-clock@", "always provided"),
    ] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(import))
            .unwrap_or_else(|| panic!("no {import} in\n{}", r.stdout));
        assert!(line.ends_with(note), "{import}: {line}");
    }

    sb.write("junk.wasm", b"\0asm\x01\0\0\0 not a component");
    sb.capgate(["inspect", "junk.wasm"])
        .expect(65)
        .stderr_has("junk.wasm: not a valid WebAssembly component");
    sb.capgate(["inspect", "missing.wasm"]).expect(66);
    sb.capgate([
        "inspect",
        "probe.wasm",
        "--policy",
        "p.yaml",
        "--component",
        "nope",
    ])
    .expect(64);
}

#[test]
fn inspect_names_the_policy_key_of_each_import_and_refuses_what_will_not_instantiate() {
    let sb = Sandbox::new();
    std::fs::copy(guests::guest("vault-client"), sb.path("client.wasm")).unwrap();
    std::fs::create_dir_all(sb.path("a")).unwrap();
    std::fs::create_dir_all(sb.path("b")).unwrap();
    // Each import with the key that grants it; another component's interface with its
    // functions, which `calls.functions` may list.
    let r = sb.capgate(["inspect", "client.wasm"]);
    r.expect(0)
        .stdout_has("test:secrets/vault@0.1.0  [calls]\n    functions: get-public, get-secret, read-file, env, crash, count, add")
        .stdout_has("wasi:filesystem/preopens@0.2.6  [files (and cwd)]")
        .stdout_has("wasi:cli/environment@0.2.6  [env, env_from_host, args, cwd]");
    // A policy of one component needs no `--component`; counts read as English.
    sb.write(
        "one.yaml",
        "capgate: 1\nname: one\nversion: 1\ncomponents:\n  client:\n    component: client.wasm\n    files: [{ host: a, guest: /a }, { host: b, guest: /b }]\n",
    );
    // Nothing links `test:secrets/vault`: the listing says so, and the exit status too.
    let r = sb.capgate(["inspect", "client.wasm", "--policy", "one.yaml"]);
    r.expect(65)
        .stdout_has("granted: 2 preopened directories")
        .stdout_has("NOT PROVIDED: no `calls` entry names this interface")
        .stderr_has(
            "1 import is not provided: `client.wasm` will not instantiate under this policy",
        );
    // Control: with the link, it will.
    sb.write(
        "two.yaml",
        "capgate: 1\nname: two\nversion: 1\ncomponents:\n  client:\n    component: client.wasm\n    calls: [{ component: vault, interface: test:secrets/vault }]\n  vault:\n    component: client.wasm\n",
    );
    sb.capgate(["inspect", "client.wasm", "--policy", "two.yaml"])
        .expect(64)
        .stderr_has("has 2 components; say which with `--component NAME`");
    sb.capgate([
        "inspect",
        "client.wasm",
        "--policy",
        "two.yaml",
        "--component",
        "client",
    ])
    .expect(0)
    .stdout_has("granted: linked to vault");
}

#[test]
fn policy_suggest_writes_a_starter_policy_that_grants_nothing_until_edited() {
    let sb = Sandbox::new();
    std::fs::copy(guests::guest("probe"), sb.path("probe.wasm")).unwrap();
    let r = sb.capgate(["policy", "suggest", "probe.wasm"]);
    r.expect(0);
    let yaml = r.stdout.clone();
    // One commented entry per capability its imports could use, with the key that grants it.
    for line in [
        "name: probe\n",
        "    component: probe.wasm\n",
        "    # files:\n",
        "    # network:\n",
        "    #   connect: [tcp://203.0.113.10:443]\n",
        "    #   udp: [udp://203.0.113.53:53]\n",
        "    #   lookup: [api.example.com]\n",
        "    # http:\n",
        "    # env: { KEY: value }\n",
    ] {
        assert!(yaml.contains(line), "no {line:?} in\n{yaml}");
    }
    // As printed, it is a valid policy that grants nothing (every grant is commented out).
    sb.write("probe.yaml", &yaml);
    sb.capgate(["policy", "check", "probe.yaml"])
        .expect(0)
        .stdout_has("probe: 0 grants");
    // Uncommenting an entry grants it.
    sb.write("data/x", "x");
    sb.write(
        "probe.yaml",
        yaml.replace("    # files:\n    #   - {", "    files:\n      - {"),
    );
    sb.capgate(["policy", "check", "probe.yaml"])
        .expect(0)
        .stdout_has("probe: 1 grant");

    // Another component's interface comes with its functions, for `calls.functions`.
    std::fs::copy(guests::guest("vault-client"), sb.path("client.wasm")).unwrap();
    sb.capgate(["policy", "suggest", "client.wasm", "--name", "my-client"])
        .expect(0)
        .stdout_has("name: my-client\n")
        .stdout_has("#   - { component: PROVIDER, interface: test:secrets/vault, functions: [get-public, get-secret, read-file, env, crash, count, add] }");
    sb.capgate(["policy", "suggest", "client.wasm", "--name", "Bad Name"])
        .expect(64)
        .stderr_has("is not a valid name");
    // It names the component too: a name that starts with a digit would not pass the check.
    sb.capgate(["policy", "suggest", "client.wasm", "--name", "1client"])
        .expect(64)
        .stderr_has("expected a lowercase letter");
}
