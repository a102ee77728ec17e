//! Quantities in policies: memory sizes (`64MiB`, `1GiB`, bytes) and durations (`250ms`, `5s`,
//! `1m`). Parsing is exact: a unit capgate does not know is an error with a suggestion, never
//! a silent guess (`64MB` is not read as mebibytes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A number of bytes, written as an integer or with `KiB`, `MiB` or `GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    /// A size of `n` bytes.
    pub const fn from_bytes(n: u64) -> Self {
        Self(n)
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a quantity did not parse: what was found, what is expected, and a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not {expected}")]
pub struct UnitError {
    /// The text found.
    pub found: String,
    /// What was expected.
    pub expected: &'static str,
    /// How to write it, if there is an obvious fix.
    pub hint: Option<String>,
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n = s[..digits].parse().ok()?;
    Some((n, s[digits..].trim_start()))
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "a memory size: bytes, or a number with `KiB`, `MiB` or `GiB`";
        let err = |hint: Option<String>| UnitError {
            found: s.to_owned(),
            expected: EXPECTED,
            hint,
        };
        let (n, unit) = split_number(s.trim()).ok_or_else(|| err(None))?;
        let mult: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                let fix = match other.to_ascii_lowercase().as_str() {
                    "k" | "kb" | "kib" => Some("KiB"),
                    "m" | "mb" | "mib" => Some("MiB"),
                    "g" | "gb" | "gib" => Some("GiB"),
                    _ => None,
                };
                return Err(err(fix.map(|u| format!("write `{n}{u}`"))));
            }
        };
        n.checked_mul(mult)
            .map(Self)
            .ok_or_else(|| err(Some("the size is too large".into())))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration written as `250ms`, `5s`, `1m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(Duration);

impl Span {
    /// A span of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The duration.
    pub fn duration(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "a duration: a number with `ms`, `s`, `m` or `h`";
        let err = |hint: Option<String>| UnitError {
            found: s.to_owned(),
            expected: EXPECTED,
            hint,
        };
        let (n, unit) = split_number(s.trim()).ok_or_else(|| err(None))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(err(Some(format!("add a unit, e.g. `{n}s`")))),
            other => {
                let fix = match other {
                    "sec" | "secs" | "second" | "seconds" => Some("s"),
                    "min" | "mins" | "minute" | "minutes" => Some("m"),
                    "msec" | "millis" => Some("ms"),
                    _ => None,
                };
                return Err(err(fix.map(|u| format!("write `{n}{u}`"))));
            }
        };
        if d.is_zero() {
            return Err(err(Some("a limit of zero would stop every guest".into())));
        }
        if d > Duration::from_secs(7 * 24 * 3600) {
            return Err(err(Some("the longest limit is a week (`168h`)".into())));
        }
        Ok(Self(d))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().bytes(), 64 << 20);
        assert_eq!("1GiB".parse::<ByteSize>().unwrap().bytes(), 1 << 30);
        assert_eq!("4096".parse::<ByteSize>().unwrap().bytes(), 4096);
        let e = "64MB".parse::<ByteSize>().unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("write `64MiB`"));
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("99999999999999GiB".parse::<ByteSize>().is_err());
        for s in ["64MiB", "1GiB", "3KiB", "1000"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn spans() {
        assert_eq!(
            "250ms".parse::<Span>().unwrap().duration(),
            Duration::from_millis(250)
        );
        assert_eq!(
            "5s".parse::<Span>().unwrap().duration(),
            Duration::from_secs(5)
        );
        assert_eq!(
            "1m".parse::<Span>().unwrap().duration(),
            Duration::from_secs(60)
        );
        assert_eq!(
            "5".parse::<Span>().unwrap_err().hint.as_deref(),
            Some("add a unit, e.g. `5s`")
        );
        assert_eq!(
            "5sec".parse::<Span>().unwrap_err().hint.as_deref(),
            Some("write `5s`")
        );
        assert!("0s".parse::<Span>().is_err());
        assert!("169h".parse::<Span>().is_err());
        assert!("99999999999999999999s".parse::<Span>().is_err());
        for s in ["250ms", "5s", "2m", "1h"] {
            assert_eq!(s.parse::<Span>().unwrap().to_string(), s);
        }
    }
}
