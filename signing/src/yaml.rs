//! Strict, bounded YAML parsing shared by every capgate format (trust roots, policies).
//!
//! This module owns the parser settings: duplicate keys and YAML merge keys are errors, and a
//! budget bounds depth, node count, scalar bytes and alias expansion so hostile input costs
//! milliseconds. It turns parser errors into [`Error::Syntax`] with file, line, column and, for
//! a misspelt key, a "did you mean" hint. It never decides what a document means.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_saphyr::{Budget, DuplicateKeyPolicy, MergeKeyPolicy, Options};

use crate::error::Error;

/// Upper bound on the size of any YAML document capgate reads.
pub const MAX_YAML_BYTES: u64 = 4 * 1024 * 1024;

fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = Some(MAX_YAML_BYTES as usize);
    budget.max_depth = 32;
    budget.max_nodes = 100_000;
    budget.max_events = 400_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_YAML_BYTES as usize;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = 1024 * 1024;
    let mut o = Options::default();
    o.budget = Some(budget);
    o.duplicate_keys = DuplicateKeyPolicy::Error;
    o.merge_keys = MergeKeyPolicy::Error;
    o.strict_booleans = true;
    o.with_snippet = false;
    o
}

/// Parses `text` (read from `path`) into `T` with capgate's strict settings.
pub fn from_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| syntax_error(path, text, &e))
}

/// Parses YAML bytes, refusing input that is not UTF-8 with the offending position.
pub fn from_slice<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => from_str(path, text),
        Err(e) => {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            let column = (before.len()
                - before
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)) as u64
                + 1;
            Err(Error::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: "not valid UTF-8 text".into(),
                hint: None,
            })
        }
    }
}

fn syntax_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = e.without_snippet().to_string();
    // The parser appends its own position; ours leads the message already.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let message = message.trim().trim_end_matches('.').to_string();
    let hint = suggestion(&message).map(|s| format!("did you mean `{s}`?"));
    // "invalid u64" alone names neither the key nor the value: say both.
    if matches!(
        message.as_str(),
        "invalid u64" | "invalid u32" | "invalid u16" | "invalid u8"
    ) && let Some((key, value)) = key_and_value_at(text, line, column)
    {
        return Error::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: format!(
                "`{key}` must be a whole number, found `{}`",
                crate::error::clip(value)
            ),
            hint: Some(format!(
                "write it in digits only, with no exponent, sign or separators, e.g. `{key}: 2000000000`"
            )),
        };
    }
    Error::Syntax {
        path: path.to_owned(),
        line,
        column,
        message,
        hint,
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" or "unknown variant" messages,
/// the expected name closest to the one found, if it is close enough to be a typo.
pub fn suggestion(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (found, rest) = rest.split_once('`')?;
    let (_, expected) = rest.split_once("expected ")?;
    let expected = expected
        .trim_start_matches("one of ")
        .trim_start_matches("any of ");
    expected
        .split(", ")
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty())
        .map(|c| (edit_distance(found, c), c))
        .filter(|(d, c)| *d > 0 && *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c.to_string())
}

/// The key whose value starts at `line`:`column` (1-based) of `text`, and that value as
/// written, for a YAML line like `  fuel: 2e9` or `limits: { fuel: 2e9 }`.
fn key_and_value_at(text: &str, line: u64, column: u64) -> Option<(&str, &str)> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let at = l
        .char_indices()
        .nth(usize::try_from(column).ok()?.checked_sub(1)?)
        .map(|(i, _)| i)?;
    let (before, after) = l.split_at(at);
    let before = before.trim_end().strip_suffix(':')?;
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    let key = &before[start..];
    let value = after
        .split([',', '}', ']', '#'])
        .next()
        .unwrap_or(after)
        .trim();
    (!key.is_empty() && !value.is_empty()).then_some((key, value))
}

/// Levenshtein distance, for suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        network: Option<u32>,
        files: Option<u32>,
    }

    #[test]
    fn unknown_key_has_position_and_hint() {
        let err = from_str::<Doc>(Path::new("p.yaml"), "files: 1\nnetwrk: 2\n").unwrap_err();
        let Error::Syntax {
            line, column, hint, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((*line, *column), (2, 1), "{err}");
        assert_eq!(hint.as_deref(), Some("did you mean `network`?"), "{err}");
        assert!(
            err.to_string()
                .starts_with("p.yaml:2:1: unknown field `netwrk`"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err =
            from_str::<BTreeMap<String, u32>>(Path::new("d.yaml"), "a: 1\na: 2\n").unwrap_err();
        assert!(err.to_string().contains("d.yaml:2:"), "{err}");
        assert!(
            err.to_string().to_lowercase().contains("duplicate"),
            "{err}"
        );
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            y.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = from_str::<BTreeMap<String, serde_json::Value>>(Path::new("b.yaml"), &y);
        assert!(err.is_err());
    }

    #[test]
    fn invalid_utf8_is_located() {
        let err =
            from_slice::<Doc>(Path::new("u.yaml"), b"files: 1\nnet\xffwork: 2\n").unwrap_err();
        assert!(
            err.to_string().starts_with("u.yaml:2:4: not valid UTF-8"),
            "{err}"
        );
    }
}
