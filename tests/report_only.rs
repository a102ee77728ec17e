//! Report-only rules: a rule marked `@mode("report")` is evaluated and its would-be decision
//! recorded (`"enforced": false`), but never enforced, so a new `forbid` can be rolled out
//! and watched before it bites.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Sandbox, run_probe, signed_policy};

/// A probe with a read-write `/data`, every decision audited to `audit.jsonl`.
const POLICY: &str = "capgate: 1
name: rollout
version: 1
rules: [rules.cedar]
audit: { level: LEVEL, log: audit.jsonl }
components:
  probe:
    component: probe.wasm
    files: [{ host: data, guest: /data, access: read-write }]
";

/// The rule being rolled out: no writes under `/data/tmp/`.
fn rule(mode: &str) -> String {
    format!(
        "@id(\"no-tmp-writes\")\n{mode}forbid(principal, action == Action::\"fs.write\", resource)\nwhen {{ resource.path like \"/data/tmp/*\" }};\n"
    )
}

fn fixture(mode: &str, level: &str) -> Sandbox {
    let sb = Sandbox::new();
    sb.write("data/tmp/.keep", "");
    sb.write("rules.cedar", rule(mode));
    signed_policy(&sb, &["probe"], &POLICY.replace("LEVEL", level));
    sb
}

/// The audit log's decision records, as JSON.
fn records(sb: &Sandbox) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sb.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("decision").is_some())
        .collect()
}

#[test]
fn a_report_only_forbid_is_recorded_and_the_request_proceeds() {
    let sb = fixture("@mode(\"report\")\n", "deny");
    let run = run_probe(&sb, "probe", &["write", "/data/tmp/x", "hello"]);
    run.expect(0);
    // The write happened...
    assert_eq!(
        std::fs::read_to_string(sb.path("data/tmp/x")).unwrap(),
        "hello"
    );
    // ...the operator is told what the rule would have done...
    run.stderr_has(
        "capgate: report-only rules would deny `probe` fs.write /data/tmp/x: forbidden by `no-tmp-writes`",
    );
    // ...and the log holds the would-be denial, marked as not enforced. At `level: deny` the
    // allow itself is not kept.
    let recs = records(&sb);
    let reported: Vec<_> = recs
        .iter()
        .filter(|r| r["resource"] == "/data/tmp/x")
        .collect();
    assert_eq!(reported.len(), 1, "{recs:#?}");
    assert_eq!(reported[0]["decision"], "deny");
    assert_eq!(reported[0]["enforced"], false);
    assert_eq!(reported[0]["reasons"], serde_json::json!(["no-tmp-writes"]));
    // A write the rule does not cover leaves no record at all.
    run_probe(&sb, "probe", &["write", "/data/y", "hello"]).expect(0);
    assert!(records(&sb).iter().all(|r| r["resource"] != "/data/y"));
    // The chain still verifies with the new field in it.
    sb.capgate(["audit", "verify", "audit.jsonl"]).expect(0);
    // `policy check` says which rules are not enforced.
    sb.capgate(["policy", "check", "policy.yaml"])
        .expect(0)
        .stdout_has("note: report-only rules (recorded, not enforced): `no-tmp-writes`");
}

#[test]
fn the_same_rule_without_the_mark_denies() {
    let sb = fixture("", "deny");
    run_probe(&sb, "probe", &["write", "/data/tmp/x", "hello"])
        .stderr_has("capgate: denied `probe` fs.write /data/tmp/x: forbidden by `no-tmp-writes`");
    assert!(!sb.path("data/tmp/x").exists());
    let recs = records(&sb);
    let denied = recs
        .iter()
        .find(|r| r["resource"] == "/data/tmp/x")
        .unwrap();
    assert_eq!(denied["decision"], "deny");
    assert!(denied.get("enforced").is_none(), "{denied}");
    // `@mode("enforce")` is the same as no mark.
    let sb = fixture("@mode(\"enforce\")\n", "deny");
    run_probe(&sb, "probe", &["write", "/data/tmp/x", "hello"]);
    assert!(!sb.path("data/tmp/x").exists());
}

#[test]
fn at_level_all_both_the_enforced_allow_and_the_would_be_deny_are_recorded() {
    let sb = fixture("@mode(\"report\")\n", "all");
    run_probe(&sb, "probe", &["write", "/data/tmp/x", "hello"]).expect(0);
    let recs = records(&sb);
    let writes: Vec<_> = recs
        .iter()
        .filter(|r| r["resource"] == "/data/tmp/x" && r["action"] == "fs.write")
        .collect();
    assert_eq!(writes.len(), 2, "{recs:#?}");
    assert_eq!(writes[0]["decision"], "allow");
    assert!(writes[0].get("enforced").is_none());
    assert_eq!(writes[1]["decision"], "deny");
    assert_eq!(writes[1]["enforced"], false);
}

#[test]
fn audit_summary_shows_what_report_only_rules_would_have_denied() {
    let sb = fixture("@mode(\"report\")\n", "all");
    for f in ["a", "b", "a"] {
        run_probe(&sb, "probe", &["write", &format!("/data/tmp/{f}"), "x"]).expect(0);
    }
    let summary = sb.capgate(["audit", "summary", "audit.jsonl"]);
    summary.expect(0);
    let out = &summary.stdout;
    assert!(
        out.contains("report-only rules would have denied (not enforced)"),
        "{out}"
    );
    let row = |resource: &str| {
        out.lines()
            .find(|l| l.contains(resource) && l.contains("no-tmp-writes"))
            .unwrap_or_else(|| panic!("no row for {resource}:\n{out}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(row("/data/tmp/a"), "2");
    assert_eq!(row("/data/tmp/b"), "1");
    // The enforced counts are of enforced decisions only: no deny among them.
    assert!(
        !out.lines()
            .any(|l| l.starts_with("probe") && l.contains("fs.write") && l.contains("deny")),
        "{out}"
    );
    // Machine-readable too.
    let json = sb.capgate(["--log-format", "json", "audit", "summary", "audit.jsonl"]);
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["report_only_denied"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn replay_compares_report_records_with_what_report_only_rules_would_decide() {
    let sb = fixture("@mode(\"report\")\n", "all");
    run_probe(&sb, "probe", &["write", "/data/tmp/x", "hello"]).expect(0);
    let replay = || {
        sb.capgate([
            "audit",
            "replay",
            "audit.jsonl",
            "--policy",
            "policy.yaml",
            "--trust",
            "trust.yaml",
        ])
    };
    // Under the same policy, nothing changes: the allow is still an allow, the would-be deny
    // still a would-be deny.
    let same = replay();
    same.expect(0);
    assert!(same.stdout.contains(": 0 would change"), "{}", same.stdout);
    // Promoting the rule to enforced turns the recorded allow into a deny (the rollout's
    // effect, predicted), while the report record, already a deny, does not change.
    sb.write("rules.cedar", rule(""));
    std::fs::remove_file(sb.path("policy.yaml.sig")).unwrap();
    sb.write(
        "policy.yaml",
        POLICY
            .replace("LEVEL", "all")
            .replace("version: 1", "version: 2"),
    );
    sb.capgate(["sign", "policy", "policy.yaml", "--key", "keys/alice.key"])
        .expect(0);
    let promoted = replay();
    promoted.expect(0);
    assert!(
        promoted
            .stdout
            .contains(": 1 would change (1 allow → deny, 0 deny → allow)"),
        "{}",
        promoted.stdout
    );
    assert!(
        promoted
            .stdout
            .contains("probe fs.write /data/tmp/x: allow → deny (denied by `no-tmp-writes`"),
        "{}",
        promoted.stdout
    );
}

#[test]
fn a_mode_other_than_report_or_enforce_is_an_error_at_its_rule() {
    let sb = Sandbox::new();
    sb.write("data/.keep", "");
    sb.write("rules.cedar", rule("@mode(\"reprot\")\n"));
    sb.write(
        "probe.wasm",
        std::fs::read(common::guests::guest("probe")).unwrap(),
    );
    sb.write("policy.yaml", POLICY.replace("LEVEL", "deny"));
    let check = sb.capgate(["policy", "check", "policy.yaml"]);
    check.expect(65);
    check.stderr_has("rules.cedar:1:1");
    check.stderr_has("`@mode(\"reprot\")` is not a mode: expected `report` or `enforce`");
    // A key that only looks like `mode` would silently enforce: refused too.
    sb.write("rules.cedar", rule("@Mode(\"report\")\n"));
    let check = sb.capgate(["policy", "check", "policy.yaml"]);
    check.expect(65);
    check.stderr_has("`@Mode` is not `@mode` (annotation keys are case-sensitive)");
}

#[test]
fn the_library_reports_what_report_only_rules_would_decide() {
    let sb = fixture("@mode(\"report\")\n", "deny");
    let trust = capgate::signing::TrustRoot::load(&sb.path("trust.yaml")).unwrap();
    let policy = capgate::VerifiedPolicy::load(
        &sb.path("policy.yaml"),
        &trust,
        &capgate::signing::StateStore::at(sb.path("state")),
    )
    .unwrap();
    let request = capgate::authz::Request::File {
        write: true,
        path: "/data/tmp/x".into(),
    };
    let d = policy.authority().decide("probe", &request);
    assert!(d.allowed, "{d:?}");
    let would = d.report.as_deref().unwrap();
    assert!(!would.allowed);
    assert_eq!(would.reasons, ["no-tmp-writes"]);
    // A request the rule does not cover has no report; neither does the reference decision
    // disagree with the fast one.
    let other = capgate::authz::Request::File {
        write: true,
        path: "/data/y".into(),
    };
    assert_eq!(policy.authority().decide("probe", &other).report, None);
    for r in [&request, &other] {
        assert_eq!(
            policy.authority().decide_uncached("probe", r),
            policy.authority().decide_reference("probe", r)
        );
    }
}
