//! `capgate policy diff OLD NEW`: pairs of policy versions and the delta each must show, one of
//! them a change of a Cedar rule alone (decided by the cvc5 solver), and `capgate sign policy`
//! showing a co-signer the delta against what the host runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sandbox, run_probe, signed_probe_policy};
use serde_json::Value;

const BASE: &str = "capgate: 1
name: svc
version: 1
RULES
components:
  probe:
    component: probe.wasm
    files: [{ host: data, guest: /data, access: ACCESS }]
    network:
      connect: [CONNECT]
      lookup: [LOOKUP]
    http:
      - { url: https://api.example.com/v1, methods: [METHODS] }
      - HOST2
    calls:
      - { component: vault, interface: test:secrets/vault, functions: [FUNCTIONS] }
    limits: { memory: MEMORY }
  vault:
    component: probe.wasm
";

/// The base policy with the placeholders set as `edits` say (the rest as the defaults).
fn policy(version: u64, edits: &[(&str, &str)]) -> String {
    let defaults = [
        ("RULES", "rules: [rules.cedar]"),
        ("ACCESS", "read-only"),
        ("CONNECT", "tcp://10.0.0.5:5432"),
        ("LOOKUP", "db.internal, cache.internal"),
        ("METHODS", "GET, POST"),
        ("HOST2", "https://a.example.com"),
        ("FUNCTIONS", "get-public"),
        ("MEMORY", "64MiB"),
    ];
    let mut text = BASE.replace("version: 1", &format!("version: {version}"));
    for (key, value) in defaults {
        let v = edits
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(value, |(_, v)| *v);
        text = text.replace(key, v);
    }
    text
}

const RULE: &str = "@id(\"no-private\")\nforbid(principal, action in [Action::\"fs.read\", Action::\"fs.write\"], resource)\nwhen { resource.path like \"/data/private/*\" };\n";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("data/.keep", "");
    sb.write(
        "probe.wasm",
        std::fs::read(common::guests::guest("probe")).unwrap(),
    );
    sb.write("rules.cedar", RULE);
    sb
}

/// `policy diff` of `old` against `new` as JSON (both written into `sb`).
fn diff(sb: &Sandbox, old: &str, new: &str, env: &[(&str, &str)]) -> (Value, String) {
    sb.write("old.yaml", old);
    sb.write("new.yaml", new);
    let mut cmd = sb.command([
        "--log-format",
        "json",
        "policy",
        "diff",
        "old.yaml",
        "new.yaml",
    ]);
    cmd.envs(env.iter().copied());
    let json = common::Run::from_output(cmd.output().unwrap());
    json.expect(0);
    let mut cmd = sb.command(["policy", "diff", "old.yaml", "new.yaml"]);
    cmd.envs(env.iter().copied());
    let text = common::Run::from_output(cmd.output().unwrap());
    text.expect(0);
    (
        serde_json::from_str(json.stdout.trim()).unwrap(),
        text.stdout,
    )
}

/// The changes as `(component, key, effect, what)`.
fn changes(v: &Value) -> Vec<(String, String, String, String)> {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["component"].as_str().unwrap_or("policy").to_owned(),
                c["key"].as_str().unwrap().to_owned(),
                c["effect"].as_str().unwrap().to_owned(),
                c["what"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Placeholders and their values.
type Edits<'a> = &'a [(&'a str, &'a str)];
/// A change's key, effect and description.
type Expected<'a> = (&'a str, &'a str, &'a str);

#[test]
fn each_kind_of_grant_change_is_named_with_its_direction() {
    let sb = sandbox();
    let old = policy(1, &[]);
    let table: &[(Edits, Expected)] = &[
        // A new host.
        (
            &[(
                "HOST2",
                "https://a.example.com\n      - https://b.example.com",
            )],
            ("http", "added", "https://b.example.com (every method)"),
        ),
        // A port range widened.
        (
            &[("CONNECT", "tcp://10.0.0.5:5432-5440")],
            (
                "network.connect",
                "widened",
                "tcp://10.0.0.5:5432 → tcp://10.0.0.5:5432-5440",
            ),
        ),
        // Read-only → read-write.
        (
            &[("ACCESS", "read-write")],
            ("files", "widened", "/data: read-only → read-write"),
        ),
        // A new function.
        (
            &[("FUNCTIONS", "get-public, get-secret")],
            (
                "calls",
                "widened",
                "vault test:secrets/vault: get-public → get-public, get-secret (new: get-secret)",
            ),
        ),
        // A limit raised.
        (
            &[("MEMORY", "128MiB")],
            ("limits.memory", "widened", "raised: 64MiB → 128MiB"),
        ),
        // Fewer methods.
        (
            &[("METHODS", "GET")],
            (
                "http",
                "narrowed",
                "https://api.example.com/v1 (GET, POST) → https://api.example.com/v1 (GET)",
            ),
        ),
        // A name no longer resolved.
        (
            &[("LOOKUP", "db.internal")],
            ("network.lookup", "removed", "cache.internal"),
        ),
        // A shorter path prefix.
        (
            &[("https://api.example.com/v1", "https://api.example.com")],
            (
                "http",
                "widened",
                "https://api.example.com/v1 (GET, POST) → https://api.example.com (GET, POST)",
            ),
        ),
    ];
    for (edits, (key, effect, what)) in table {
        let mut new = policy(2, edits);
        // Edits that are not placeholders are plain replacements.
        for (k, v) in edits.iter().filter(|(k, _)| k.contains("://")) {
            new = new.replace(k, v);
        }
        let (json, text) = diff(&sb, &old, &new, &[]);
        let got = changes(&json);
        assert_eq!(
            got,
            vec![(
                "probe".to_owned(),
                key.to_string(),
                effect.to_string(),
                what.to_string()
            )],
            "edits {edits:?}:\n{text}"
        );
        assert_eq!(json["rules"]["result"], "same", "{json}");
        assert!(
            text.contains(&format!("{effect:<8} {key}: {what}")),
            "{text}"
        );
    }
    // Control: a version that changes nothing reports nothing.
    let (json, text) = diff(&sb, &old, &policy(2, &[]), &[]);
    assert!(changes(&json).is_empty(), "{text}");
    assert!(
        text.contains("no change to grants, limits, settings or rules"),
        "{text}"
    );
}

#[test]
fn a_change_of_a_cedar_rule_alone_is_decided_by_the_solver() {
    let sb = sandbox();
    let old = policy(1, &[("RULES", "rules: [old.cedar]")]);
    let new = policy(2, &[("RULES", "rules: [new.cedar]")]);
    sb.write("old.cedar", RULE);
    // The forbid now covers only /data/private/keys/: the rest of /data/private opens up.
    sb.write(
        "new.cedar",
        RULE.replace("/data/private/*", "/data/private/keys/*"),
    );
    let (json, text) = diff(&sb, &old, &new, &[]);
    assert_eq!(
        changes(&json),
        vec![(
            "policy".into(),
            "rules".into(),
            "changed".into(),
            "rule `no-private` changed (forbid → forbid)".into()
        )],
        "{text}"
    );
    assert_eq!(json["rules"]["result"], "decided", "{json}");
    let rule_changes = json["rules"]["changes"].as_array().unwrap();
    let actions: Vec<(&str, bool)> = rule_changes
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap(),
                c["newly_allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("fs.read", true), ("fs.write", true)], "{text}");
    // The solver's example really is a path the old rule forbade and the new does not.
    for c in rule_changes {
        let ex = c["example"].as_str().unwrap();
        assert!(ex.contains("/data/private/"), "{ex}");
        assert!(!ex.contains("/data/private/keys/"), "{ex}");
    }
    assert!(text.contains("+ newly allowed fs.read: Path"), "{text}");

    // The same rule with its conditions reordered decides every request the same: proved.
    sb.write(
        "new.cedar",
        "@id(\"no-private\")\nforbid(principal, action in [Action::\"fs.write\", Action::\"fs.read\"], resource)\nwhen { resource.path like \"/data/private/*\" && true };\n",
    );
    let (json, text) = diff(&sb, &old, &new, &[]);
    assert_eq!(json["rules"]["result"], "decided", "{json}");
    assert_eq!(json["rules"]["changes"], serde_json::json!([]), "{json}");
    assert!(
        text.contains("the enforced rules decide every request the same (proved by cvc5)"),
        "{text}"
    );

    // Marking the forbid report-only stops enforcing it: newly allowed.
    sb.write("new.cedar", RULE.replace("@id", "@mode(\"report\")\n@id"));
    let (json, _) = diff(&sb, &old, &new, &[]);
    let newly: Vec<bool> = json["rules"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["newly_allowed"].as_bool().unwrap())
        .collect();
    assert_eq!(newly, [true, true], "{json}");

    // Without a solver, the report says what it could not decide.
    sb.write(
        "new.cedar",
        RULE.replace("/data/private/*", "/data/private/keys/*"),
    );
    let (json, text) = diff(&sb, &old, &new, &[("CVC5", "/nonexistent/cvc5")]);
    assert_eq!(json["rules"]["result"], "undecided", "{json}");
    assert!(
        text.contains("the rules changed, and which requests that affects was not decided: no SMT solver: CVC5 names `/nonexistent/cvc5`"),
        "{text}"
    );
}

#[test]
fn with_logs_the_recorded_requests_whose_decision_changes_are_listed() {
    let sb = Sandbox::new();
    sb.write("data/a.txt", "a");
    sb.write("data/private/k.txt", "k");
    let v1 = "capgate: 1\nname: svc\nversion: 1\naudit: { level: all, log: audit.jsonl }\ncomponents:\n  probe:\n    component: probe.wasm\n    files: [{ host: data, guest: /data }]\n";
    signed_probe_policy(&sb, v1);
    run_probe(&sb, "probe", &["read", "/data/a.txt"]).expect(0);
    run_probe(&sb, "probe", &["read", "/data/private/k.txt"]).expect(0);
    sb.write("rules.cedar", RULE);
    sb.write(
        "v2.yaml",
        v1.replace("version: 1", "version: 2\nrules: [rules.cedar]"),
    );
    let out = sb.capgate([
        "policy",
        "diff",
        "policy.yaml",
        "v2.yaml",
        "--log",
        "audit.jsonl",
    ]);
    out.expect(0);
    out.stdout_has("rule `no-private` added (forbid)");
    out.stdout_has("1 would change (1 allow → deny, 0 deny → allow)");
    out.stdout_has("probe fs.read /data/private/k.txt: allow → deny (denied by `no-private`");
}

#[test]
fn signing_a_policy_shows_the_delta_against_the_version_this_host_runs() {
    let sb = Sandbox::new();
    sb.write("data/a.txt", "a");
    let v1 = "capgate: 1\nname: svc\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n    files: [{ host: data, guest: /data }]\n";
    signed_probe_policy(&sb, v1);
    // Nothing accepted yet: nothing to compare, said so.
    sb.write("v2.yaml", v1.replace("version: 1", "version: 2"));
    sb.capgate(["sign", "policy", "v2.yaml", "--key", "keys/alice.key"])
        .expect(0)
        .stdout_has("delta: no intact copy of a version of `svc` accepted on this host");
    // The host runs version 1 (and so keeps a copy of it)...
    run_probe(&sb, "probe", &["read", "/data/a.txt"]).expect(0);
    // ...and a co-signer of version 3 sees what it would add.
    sb.write(
        "v3.yaml",
        v1.replace("version: 1", "version: 3")
            .replace("guest: /data }", "guest: /data, access: read-write }"),
    );
    let signed = sb.capgate(["sign", "policy", "v3.yaml", "--key", "keys/alice.key"]);
    signed.expect(0);
    signed.stdout_has("delta against the version this host accepted:");
    signed.stdout_has("policy `svc` version 1 → `svc` version 3");
    signed.stdout_has("^ widened  files: /data: read-only → read-write");
    signed.stdout_has("signed v3.yaml");
    assert!(sb.path("v3.yaml.sig").exists());
}

#[test]
fn a_second_calls_entry_for_the_same_callee_is_seen_as_the_runtime_sees_it() {
    let sb = sandbox();
    let old = policy(1, &[]);
    // An unrestricted entry before the identical restricted one: the runtime allows every
    // function, so the diff must say so.
    let new = policy(2, &[]).replace(
        "    calls:\n",
        "    calls:\n      - { component: vault, interface: test:secrets/vault }\n",
    );
    let (json, text) = diff(&sb, &old, &new, &[]);
    assert_eq!(
        changes(&json),
        vec![(
            "probe".into(),
            "calls".into(),
            "widened".into(),
            "vault test:secrets/vault: get-public → every function".into()
        )],
        "{text}"
    );
}

#[test]
fn grants_moved_while_rules_name_grant_ids_are_reported() {
    let sb = sandbox();
    sb.write(
        "ids.cedar",
        "@id(\"tmp-only\")\nforbid(principal, action == Action::\"fs.write\", resource)\nwhen { context.grants.contains(\"probe.files[0]\") && !(resource.path like \"/data/tmp/*\") };\n",
    );
    let two = |first: &str, second: &str| {
        format!(
            "capgate: 1\nname: svc\nversion: 1\nrules: [ids.cedar]\ncomponents:\n  probe:\n    component: probe.wasm\n    files:\n      - {first}\n      - {second}\n"
        )
    };
    sb.write("logs/.keep", "");
    let (a, b) = (
        "{ host: data, guest: /data, access: read-write }",
        "{ host: logs, guest: /logs, access: read-write }",
    );
    let (json, text) = diff(
        &sb,
        &two(a, b),
        &two(b, a).replace("version: 1", "version: 2"),
        &[],
    );
    assert!(
        changes(&json)
            .iter()
            .any(|c| c.1 == "grant ids" && c.2 == "changed"),
        "{text}"
    );
}
