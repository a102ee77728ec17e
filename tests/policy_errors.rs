//! Bad input: one broken policy per error kind, through `capgate policy check`, each with the
//! exact message (file, line, column, what was expected, hint) and exit code it produces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Sandbox;

const HEAD: &str = "capgate: 1\nname: bad\nversion: 1\n";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("app.wasm", b"\0asm\x0d\0\x01\0");
    std::fs::create_dir_all(sb.path("static")).unwrap();
    sb
}

fn check(sb: &Sandbox, policy: &str) -> common::Run {
    sb.write("p.yaml", policy);
    sb.capgate(["policy", "check", "p.yaml"])
}

#[test]
fn a_good_policy_passes_as_the_control() {
    let sb = sandbox();
    sb.write("rules.cedar", "@id(\"no-admin\")\nforbid(principal, action == Action::\"http.request\", resource)\nwhen { context.path like \"/admin*\" };\n");
    let r = check(
        &sb,
        &format!(
            "{HEAD}rules: [rules.cedar]\ncomponents:\n  app:\n    component: app.wasm\n    files: [{{ host: static, guest: /static }}]\n    network: {{ connect: [tcp://10.0.0.0/8:5432] }}\n    http: [https://api.example.com, {{ url: https://*.github.com/repos/, methods: [GET] }}, {{ url: https://hooks.example.com/, methods: POST }}]\n    limits: {{ memory: 64MiB, timeout: 5s }}\n"
        ),
    );
    r.expect(0).stdout_has("ok: policy `bad` version 1 (1 component, 1 rules file), signatures not checked (no `--trust`)").stdout_has("app: 5 grants");
}

#[test]
fn each_broken_policy_gets_its_own_located_message() {
    let app = "components:\n  app:\n    component: app.wasm\n";
    let cases: Vec<(&str, String, i32, &str)> = vec![
        (
            "unknown key",
            format!("{HEAD}{app}    netwrk: {{}}\n"),
            65,
            "p.yaml:7:5: unknown field `netwrk`",
        ),
        (
            "typo hint",
            format!("{HEAD}{app}    netwrk: {{}}\n"),
            65,
            "did you mean `network`?",
        ),
        (
            "duplicate key",
            format!("{HEAD}{app}    args: [a]\n    args: [b]\n"),
            65,
            "p.yaml:8:5: duplicate",
        ),
        (
            "wrong type",
            format!("{HEAD}{app}    args: 7\n"),
            65,
            "p.yaml:7:11:",
        ),
        (
            "bad memory unit",
            format!("{HEAD}{app}    limits: {{ memory: 64MB }}\n"),
            65,
            "app.limits.memory: `64MB` is not a memory size: bytes, or a number with `KiB`, `MiB` or `GiB` (hint: write `64MiB`)",
        ),
        (
            "bad duration",
            format!("{HEAD}{app}    limits: {{ timeout: 5 }}\n"),
            65,
            "(hint: add a unit, e.g. `5s`)",
        ),
        (
            "name in a socket grant",
            format!("{HEAD}{app}    network: {{ connect: [tcp://db.internal:5432] }}\n"),
            65,
            "p.yaml:7:26: app.network.connect[0]: `tcp://db.internal:5432` is not a valid socket pattern: sockets connect to addresses, not names",
        ),
        (
            "udp pattern under connect",
            format!("{HEAD}{app}    network: {{ connect: [udp://10.0.0.1:53] }}\n"),
            65,
            "is not a `tcp://` pattern",
        ),
        (
            "socket without port",
            format!("{HEAD}{app}    network: {{ connect: [tcp://10.0.0.1] }}\n"),
            65,
            "a socket pattern needs a port",
        ),
        (
            "bad wildcard",
            format!("{HEAD}{app}    http: [https://api.*.com]\n"),
            65,
            "`*` may only be the whole host or a leading `*.`",
        ),
        (
            "lowercase method",
            format!("{HEAD}{app}    http: [{{ url: https://a.example, methods: [get] }}]\n"),
            65,
            "(hint: methods are uppercase: `GET`)",
        ),
        (
            "http entry shape",
            format!("{HEAD}{app}    http: [{{ uri: https://a.example }}]\n"),
            65,
            "an `http` entry must be a URL or `{ url: URL, methods: [...] }`",
        ),
        (
            "bad access",
            format!(
                "{HEAD}{app}    files: [{{ host: static, guest: /s, access: read-only-ish }}]\n"
            ),
            65,
            "unknown variant `read-only-ish`",
        ),
        (
            "relative guest path leaving the working directory",
            format!("{HEAD}{app}    files: [{{ host: static, guest: ../s }}]\n"),
            65,
            "guest path `../s` may not contain `.` or `..`",
        ),
        (
            "a relative and an absolute guest path for one place",
            format!(
                "{HEAD}{app}    files: [{{ host: static, guest: s }}, {{ host: static, guest: /s }}]\n"
            ),
            65,
            "guest path `/s` is mounted twice",
        ),
        (
            "working directory outside every mount",
            format!("{HEAD}{app}    files: [{{ host: static, guest: /s }}]\n    cwd: /t\n"),
            65,
            "app.cwd: `/t` is not inside a directory the component is given",
        ),
        (
            "missing host directory",
            format!("{HEAD}{app}    files: [{{ host: nowhere, guest: /s }}]\n"),
            66,
            "app.files[0]: host directory",
        ),
        (
            "missing artifact",
            format!("{HEAD}components:\n  app:\n    component: gone.wasm\n"),
            66,
            "p.yaml:6:16: component `app`: artifact",
        ),
        (
            "call to a missing component",
            format!("{HEAD}{app}    calls: [{{ component: nobody, interface: a:b/c }}]\n"),
            65,
            "app.calls[0]: no component `nobody` in this policy",
        ),
        (
            "bad interface",
            format!(
                "{HEAD}{app}    calls: [{{ component: other, interface: c }}]\n  other:\n    component: app.wasm\n"
            ),
            65,
            "is not an interface name",
        ),
        (
            "call to itself",
            format!("{HEAD}{app}    calls: [{{ component: app, interface: a:b/c }}]\n"),
            65,
            "a component cannot call itself through a link",
        ),
        (
            "env twice",
            format!("{HEAD}{app}    env: {{ TZ: UTC }}\n    env_from_host: [TZ]\n"),
            65,
            "`TZ` is in both `env` and `env_from_host`",
        ),
        (
            "bad digest pin",
            format!("{HEAD}{app}    sha256: xyz\n"),
            65,
            "`xyz` is not a sha256 digest",
        ),
        (
            "wrong format version",
            "capgate: 2\nname: bad\nversion: 1\ncomponents: {}\n".into(),
            65,
            "p.yaml:1:10: unsupported policy format `capgate: 2`, expected `capgate: 1`",
        ),
        (
            "bad name",
            "capgate: 1\nname: Bad_Name\nversion: 1\ncomponents: {}\n".into(),
            65,
            "policy name `Bad_Name` is not valid",
        ),
        (
            "no components",
            format!("{HEAD}components: {{}}\n"),
            65,
            "`components` is empty",
        ),
        (
            "expired",
            "capgate: 1\nname: bad\nversion: 1\nexpires: 2000-01-01T00:00:00Z\ncomponents: {}\n"
                .into(),
            77,
            "policy `bad` expired at 2000-01-01T00:00:00Z",
        ),
        (
            "YAML merge key",
            format!("{HEAD}base: &b {{ args: [x] }}\n{app}    <<: *b\n"),
            65,
            "p.yaml:",
        ),
    ];
    for (name, policy, code, needle) in cases {
        let sb = sandbox();
        let r = check(&sb, &policy);
        assert_eq!(
            r.code, code,
            "{name}: exit {} (want {code})\n{}",
            r.code, r.stderr
        );
        assert!(
            r.stderr.contains(needle),
            "{name}: stderr lacks {needle:?}:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
    }
}

#[test]
fn rules_errors_point_into_the_rules_file() {
    let app = "components:\n  app:\n    component: app.wasm\n";
    let cases = [
        (
            "no @id",
            "permit(principal, action, resource);\n",
            "rules.cedar:1:1: this rule has no `@id`",
        ),
        (
            "syntax",
            "@id(\"x\")\npermit(principal, action resource);\n",
            "rules.cedar:2:",
        ),
        (
            "does not type-check",
            "\n@id(\"bad-attr\")\nforbid(principal, action == Action::\"net.connect\", resource)\nwhen { resource.nope == \"x\" };\n",
            "rules.cedar:",
        ),
        (
            "duplicate id",
            "@id(\"x\") forbid(principal, action, resource);\n@id(\"x\") forbid(principal, action, resource);\n",
            "rule id `x` is already used",
        ),
        (
            "id of a grant",
            "@id(\"app.files[0]\") forbid(principal, action, resource);\n",
            "rule id `app.files[0]` is already used by a grant of the policy",
        ),
        (
            "a file rule with a misspelt attribute",
            "@id(\"no-private\")\nforbid(principal, action == Action::\"fs.read\", resource)\nwhen { resource.paht like \"/static/private/*\" };\n",
            "paht",
        ),
    ];
    for (name, rules, needle) in cases {
        let sb = sandbox();
        sb.write("rules.cedar", rules);
        let r = check(
            &sb,
            &format!(
                "{HEAD}rules: [rules.cedar]\n{app}    files: [{{ host: static, guest: /static }}]\n"
            ),
        );
        assert_eq!(r.code, 65, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{name}: stderr lacks {needle:?}:\n{}",
            r.stderr
        );
    }
    // Nesting 1,000 deep is refused with its place before Cedar parses it (Cedar's parser
    // would exhaust the stack); 60 deep, as a control, parses.
    let nested = |n: usize| {
        format!(
            "@id(\"deep\")\nforbid(principal, action, resource)\nwhen {{ {}true{} }};\n",
            "(".repeat(n),
            ")".repeat(n)
        )
    };
    let sb = sandbox();
    sb.write("rules.cedar", nested(1000));
    let policy = format!("{HEAD}rules: [rules.cedar]\n{app}");
    check(&sb, &policy)
        .expect(65)
        .stderr_has("rules.cedar:3:")
        .stderr_has("the rules nest deeper than 64 levels");
    sb.write("rules.cedar", nested(60));
    check(&sb, &policy).expect(0);

    // A rule naming a component the policy lacks is legal, but linted.
    let sb = sandbox();
    sb.write(
        "rules.cedar",
        "@id(\"typo\")\nforbid(principal == Component::\"ap\", action, resource);\n",
    );
    check(&sb, &format!("{HEAD}rules: [rules.cedar]\n{app}"))
        .expect(0)
        .stdout_has("warning: ")
        .stdout_has(
            "rules.cedar:1:1: rule `typo` names component `ap`, which this policy does not define",
        );
}

#[test]
fn an_unpinned_component_is_warned_about_with_the_pin_to_add() {
    let sb = sandbox();
    let digest = capgate::signing::Sha256::of(&sb.read("app.wasm")).to_string();
    let r = check(
        &sb,
        &format!("{HEAD}components:\n  app:\n    component: app.wasm\n"),
    );
    r.expect(0)
        .stdout_has("warning: component `app` is not pinned: any artifact signed by the same key would get its grants")
        .stdout_has(&format!("add `sha256: {digest}` under `app`"));
    // Control: pinned, no warning.
    let r = check(
        &sb,
        &format!("{HEAD}components:\n  app:\n    component: app.wasm\n    sha256: {digest}\n"),
    );
    r.expect(0);
    assert!(!r.stdout.contains("not pinned"), "{}", r.stdout);
}

#[test]
fn example_policies_pass_policy_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sb = Sandbox::new();
    sb.capgate([
        "policy",
        "check",
        root.join("policies/example/static-site.yaml")
            .to_str()
            .unwrap(),
    ])
    .expect(0)
    .stdout_has("ok: policy `static-site` version 1");
}

#[test]
fn a_broken_new_version_does_not_lock_out_the_working_one() {
    let sb = Sandbox::new();
    let good =
        "capgate: 1\nname: roll\nversion: 1\ncomponents:\n  probe:\n    component: probe.wasm\n";
    common::signed_probe_policy(&sb, good);
    common::run_probe(&sb, "probe", &["exit", "0"]).expect(0);
    // Version 2 is signed but does not load (an unknown key): it is refused...
    common::resign_policy(
        &sb,
        "capgate: 1\nname: roll\nversion: 2\ncomponents:\n  probe:\n    component: probe.wasm\n    netwrk: {}\n",
    );
    common::run_probe(&sb, "probe", &["exit", "0"])
        .expect(65)
        .stderr_has("unknown field `netwrk`");
    // ...and not recorded, so version 1 still runs.
    common::resign_policy(&sb, good);
    common::run_probe(&sb, "probe", &["exit", "0"]).expect(0);
}

/// Each error a newcomer meets first has the shape `error: FILE:LINE:COLUMN: what was
/// expected (hint: what to do)`, with a real line and column and the file named as given.
#[test]
fn every_newcomer_error_has_a_location_an_expectation_and_a_hint() {
    let app = "components:\n  app:\n    component: app.wasm\n";
    let rules_policy = format!("{HEAD}rules: [rules.cedar]\n{app}");
    // (case, policy, rules, the whole message after `error: `)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "misspelt top-level key",
            format!("capgate: 1\nname: bad\nverison: 1\n{app}"),
            "",
            "p.yaml:3:1: unknown key `verison`, and `version` is missing (hint: did you mean `version`?)",
        ),
        (
            "a number with an exponent",
            format!("{HEAD}{app}    limits: {{ fuel: 2e9 }}\n"),
            "",
            "p.yaml:7:21: `fuel` must be a whole number, found `2e9` (hint: write it in digits only, with no exponent, sign or separators, e.g. `fuel: 2000000000`)",
        ),
        (
            "a misspelt component key",
            format!("{HEAD}{app}    netwrk: {{}}\n"),
            "",
            "p.yaml:7:5: unknown field `netwrk`",
        ),
        (
            "a rule without its `;`",
            rules_policy.clone(),
            "@id(\"x\")\nforbid(principal, action, resource)\n",
            "rules.cedar:2:36: not valid Cedar: unexpected end of input (hint: every rule ends with `;`: is one missing?)",
        ),
        (
            "a rule that does not type-check",
            rules_policy.clone(),
            "@id(\"x\")\nforbid(principal, action == Action::\"net.connect\", resource)\nwhen { resource.nope == \"x\" };\n",
            "(hint: `capgate policy schema` prints the entities, actions and context of each action)",
        ),
    ];
    for (name, policy, rules, want) in cases {
        let sb = sandbox();
        if !rules.is_empty() {
            sb.write("rules.cedar", rules);
        }
        let r = check(&sb, &policy);
        assert_eq!(r.code, 65, "{name}: {}", r.stderr);
        let line = r.stderr.lines().next().unwrap_or_default();
        assert!(line.contains(want), "{name}: {line:?} lacks {want:?}");
        // The shape: a relative file, a line and a column above zero, a hint.
        let rest = line.strip_prefix("error: ").expect("an error line");
        let mut parts = rest.splitn(4, ':');
        let (file, l, c) = (parts.next(), parts.next(), parts.next());
        assert!(
            matches!(file, Some("p.yaml" | "rules.cedar")),
            "{name}: {line}"
        );
        assert!(
            l.and_then(|l| l.parse::<u64>().ok()).is_some_and(|l| l > 0)
                && c.and_then(|c| c.trim().parse::<u64>().ok())
                    .is_some_and(|c| c > 0),
            "{name}: no line and column in {line}"
        );
        assert!(line.contains(" (hint: "), "{name}: no hint in {line}");
    }
    // `capgate policy schema` prints what the hint promises.
    let sb = sandbox();
    sb.capgate(["policy", "schema"])
        .expect(0)
        .stdout_has("action \"net.connect\"");
}

#[test]
fn a_rules_path_with_dot_parts_is_refused_when_signing_not_only_when_verifying() {
    let sb = sandbox();
    sb.keys(&["alice"]);
    sb.write(
        "rules.cedar",
        "@id(\"no-http\")\nforbid (principal, action == Action::\"http.request\", resource);\n",
    );
    let policy = |rules: &str| {
        format!("{HEAD}rules: [{rules}]\ncomponents:\n  app:\n    component: app.wasm\n")
    };
    for bad in ["./rules.cedar", "static/../rules.cedar"] {
        sb.write("p.yaml", policy(bad));
        sb.capgate(["sign", "policy", "p.yaml", "--key", "keys/alice.key"])
            .expect(65)
            .stderr_has("p.yaml:4:9: rules path")
            .stderr_has("hint: write `");
        assert!(!sb.path("p.yaml.sig").exists());
    }
    // The plain name signs (and is what verification reads back).
    sb.write("p.yaml", policy("rules.cedar"));
    sb.capgate(["sign", "policy", "p.yaml", "--key", "keys/alice.key"])
        .expect(0);
}
