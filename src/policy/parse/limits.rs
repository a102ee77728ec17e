//! `limits`: sizes, durations and counts, each checked for a usable range.

use serde_saphyr::Spanned;

use super::{Ctx, Quantity, RawLimits};
use crate::policy::error::PolicyError;
use crate::policy::model::Limits;
use crate::policy::units::{ByteSize, Span};

/// The limits of component `name`, from its `limits` section over the defaults.
pub(super) fn limits(cx: &Ctx<'_>, name: &str, raw: &RawLimits) -> Result<Limits, PolicyError> {
    let mut limits = Limits::default();
    let size = |q: &Spanned<Quantity>, field: &str| match &q.value {
        Quantity::Bytes(n) => Ok(ByteSize::from_bytes(*n)),
        Quantity::Text(t) => t
            .parse()
            .map_err(|e| cx.unit(&q.referenced, &format!("{name}.limits.{field}"), e)),
    };
    let count = |n: &Spanned<u32>, field: &str| {
        if n.value == 0 || n.value > 65536 {
            return Err(cx.err(
                &n.referenced,
                format!("{name}.limits.{field}: must be between 1 and 65536"),
                None,
            ));
        }
        Ok(n.value)
    };
    if let Some(m) = &raw.memory {
        limits.memory = size(m, "memory")?;
    }
    if let Some(t) = &raw.timeout {
        limits.timeout = Some(
            t.value
                .parse::<Span>()
                .map_err(|e| cx.unit(&t.referenced, &format!("{name}.limits.timeout"), e))?,
        );
    }
    if let Some(f) = &raw.fuel {
        if f.value == 0 {
            return Err(cx.err(
                &f.referenced,
                format!("{name}.limits.fuel: must be at least 1"),
                None,
            ));
        }
        limits.fuel = Some(f.value);
    }
    if let Some(n) = &raw.instances {
        if n.value == 0 {
            return Err(cx.err(
                &n.referenced,
                format!("{name}.limits.instances: must be at least 1"),
                None,
            ));
        }
        limits.instances = n.value;
    }
    if let Some(n) = &raw.files {
        limits.files = count(n, "files")?;
    }
    if let Some(n) = &raw.sockets {
        limits.sockets = count(n, "sockets")?;
    }
    if let Some(b) = &raw.body {
        limits.body = size(b, "body")?;
    }
    if let Some(o) = &raw.output {
        limits.output = size(o, "output")?;
    }

    Ok(limits)
}
