//! The layout is the data flow: each module of the library imports only from the modules
//! before it (the order `src/lib.rs` lists), so there is no cycle and no stage reaches back;
//! and the gate is the only route from an enforcement point to a decision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The library's top-level modules in data-flow order; `lib.rs` says what each owns.
const ORDER: &[&str] = &[
    "policy", "authz", "diff", "oci", "verified", "audit", "learn", "gate", "runtime", "inspect",
    "danger",
];

/// Names the crate root re-exports, and the module each comes from.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("VerifiedPolicy", "verified"),
    ("Host", "runtime"),
    ("HostConfig", "runtime"),
    ("RunError", "runtime"),
    ("LimitHit", "runtime"),
    ("Prepared", "runtime"),
    ("Cause", "runtime"),
    ("DecisionEvent", "gate"),
    ("serve", "runtime"),
    ("serve_versions", "runtime"),
    ("servable", "runtime"),
    ("signing", "signing"),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's source files with the top-level module each belongs to (the CLI, a
/// separate crate, and `lib.rs` itself are left out).
fn library_files() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_owned();
            let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
            let module = first.trim_end_matches(".rs").to_owned();
            if ["cli", "lib", "main"].contains(&module.as_str()) {
                return None;
            }
            // Test modules may reach anywhere.
            let text = std::fs::read_to_string(&p).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            Some((module, rel, code))
        })
        .collect()
}

/// The top-level modules `code` names through `crate::`.
fn imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` lists are not used in this code base; a name is one module.
            if !name.is_empty() {
                let module = ROOT_ITEMS
                    .iter()
                    .find(|(item, _)| *item == name)
                    .map_or(name.clone(), |(_, m)| (*m).to_owned());
                found.push(module);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn every_module_imports_only_from_the_modules_before_it() {
    let files = library_files();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    for (module, rel, code) in &files {
        let Some(me) = ORDER.iter().position(|m| m == module) else {
            panic!(
                "`{module}` ({}) is not in the layering order; add it to ORDER and to lib.rs",
                rel.display()
            );
        };
        for used in imports(code) {
            if used == "signing" || used == *module {
                continue;
            }
            match ORDER.iter().position(|m| *m == used) {
                Some(at) if at < me => {}
                _ => wrong.push(format!("{} ({module}) imports `{used}`", rel.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the data flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_an_import_against_the_flow() {
    // Positive control for the test above: a stage naming a later one is reported.
    assert_eq!(imports("use crate::gate::Gate;"), ["gate"]);
    assert_eq!(imports("let p: crate::VerifiedPolicy;"), ["verified"]);
    assert!(imports("// use crate::runtime::Host;").is_empty());
}

/// What only the gate (and the stages it calls) may do: evaluate a decision, or write a
/// decision's record.
const DECIDING: &[&str] = &[
    "authority().decide(",
    "authority().cached(",
    "authority().decide_uncached(",
    "authority().decide_reference(",
    ".admit(",
];

#[test]
fn the_gate_is_the_only_route_to_a_decision() {
    let mut wrong = Vec::new();
    for (module, rel, code) in library_files() {
        // The gate itself; the authority and the audit stage (replay re-decides logged
        // requests under another policy, recording nothing).
        if ["gate", "authz", "audit"].contains(&module.as_str()) {
            continue;
        }
        for needle in DECIDING {
            if code.contains(needle) {
                wrong.push(format!("{} calls `{needle}`", rel.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "decisions outside the gate:\n{}",
        wrong.join("\n")
    );
    // Positive control: the gate does decide through the authority.
    let gate =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gate.rs")).unwrap();
    assert!(gate.contains("authority().decide(") && gate.contains(".admit("));
}

#[test]
fn no_library_file_is_over_600_lines() {
    let long: Vec<String> = library_files()
        .into_iter()
        .map(|(_, rel, _)| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(&rel);
            (rel, std::fs::read_to_string(path).unwrap().lines().count())
        })
        .filter(|(_, n)| *n > 600)
        .map(|(rel, n)| format!("{}: {n} lines", rel.display()))
        .collect();
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}
