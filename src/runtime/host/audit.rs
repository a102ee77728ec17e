//! The audit side of a [`Host`]: each policy's auditor, the log files they share, policy
//! events, OTLP exporters, and closing it all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Host, lock};
use crate::audit::{
    Auditor, Checkpointer, JsonlOptions, JsonlSink, OnFailure, PolicyChange, PolicyEvent,
    PolicyRef, PolicyTag,
};
use crate::runtime::error::RunError;
use crate::verified::VerifiedPolicy;

#[cfg(feature = "otlp")]
use super::EXPORT_GRACE;

impl Host {
    /// `policy`'s auditor on this host, opened on first use.
    pub(super) fn auditor(
        &self,
        policy: &VerifiedPolicy,
    ) -> Result<Option<Arc<Auditor>>, RunError> {
        let mut auditors = lock(&self.auditors);
        Ok(match auditors.get(&policy.id()) {
            Some(a) => a.clone(),
            None => {
                let a = self.new_auditor(policy)?;
                // What each `oci://` reference resolved to, before any decision under it
                // (the map's lock is still held: no decision of this policy can come first).
                if let Some(a) = &a
                    && !pulled(policy).is_empty()
                {
                    a.record_event(event(policy, PolicyChange::Loaded, None, None, None))
                        .map_err(|source| RunError::Audit { source })?;
                }
                auditors.insert(policy.id(), a.clone());
                a
            }
        })
    }

    /// Records in `policy`'s audit log (if it keeps one) that the policy served changed:
    /// `policy` activated (after `previous`), refused (`policy` is then the version that
    /// goes on serving, `reason` why the other was refused), or expired. `source` is where
    /// the policy is read from.
    pub fn record_policy_event(
        &self,
        policy: &VerifiedPolicy,
        event: crate::audit::PolicyChange,
        source: &str,
        previous: Option<&VerifiedPolicy>,
        reason: Option<String>,
    ) -> Result<(), RunError> {
        let Some(auditor) = self.auditor(policy)? else {
            return Ok(());
        };
        let source = Some(source.to_owned()).filter(|s| !s.is_empty());
        auditor
            .record_event(self::event(policy, event, source, previous, reason))
            .map_err(|source| RunError::Audit { source })
    }

    /// The auditor the policy's `audit` section asks for, with this host's overrides.
    fn new_auditor(&self, policy: &VerifiedPolicy) -> Result<Option<Arc<Auditor>>, RunError> {
        let spec = &policy.policy().audit;
        let c = &self.config;
        let checkpoints = || {
            c.audit_key
                .clone()
                .map(|k| Checkpointer::new(k, spec.checkpoint_every))
        };
        let auditor = if let Some(sink) = &c.audit_sink {
            Auditor::new(sink.clone())
        } else if let Some(path) = c.audit_log.clone().or_else(|| spec.log.clone()) {
            let anchor = c.audit_state.as_ref().map(|dir| {
                // A state directory that cannot be made leaves the anchor unwritten, and the
                // next open of the log says so.
                let _ = std::fs::create_dir_all(dir);
                crate::audit::anchor_path(dir, &path)
            });
            let mut files = lock(&self.files);
            let sink = match files.get(&path) {
                Some(sink) => sink.clone(),
                None => {
                    let options = JsonlOptions {
                        durability: spec.durability,
                        rotate: spec.rotate.map(|r| r.bytes()),
                        checkpoints: checkpoints(),
                        anchor,
                        mirror: self.exporter(spec)?,
                    };
                    let sink = Arc::new(match spec.on_failure {
                        OnFailure::FailClosed => JsonlSink::open(&path, options)
                            .map_err(|source| RunError::Audit { source })?,
                        OnFailure::Continue => JsonlSink::deferred(&path, options),
                    });
                    files.insert(path, sink.clone());
                    sink
                }
            };
            Auditor::new(sink)
        } else if let Some(endpoint) = c.audit_otlp.as_ref().or(spec.otlp.as_ref()) {
            return Err(RunError::Audit {
                source: crate::audit::AuditError::Log {
                    path: PathBuf::from(endpoint),
                    message: "records are exported over OTLP from a local log, and this policy has none (hint: give the policy an `audit.log`, or `--audit FILE`)".into(),
                },
            });
        } else {
            return Ok(None);
        };
        let mut auditor = auditor
            .level(spec.level)
            .on_failure(spec.on_failure)
            .fold_repeats(true);
        if let Some(salt) = c.audit_salt {
            auditor = auditor.salt(salt);
        }
        Ok(Some(Arc::new(auditor)))
    }

    /// The exporter a new log file mirrors its lines to, if OTLP export is asked for (this
    /// host's endpoint first, else the policy's).
    fn exporter(
        &self,
        spec: &crate::policy::AuditSpec,
    ) -> Result<Option<Arc<dyn crate::audit::LineMirror>>, RunError> {
        let Some(endpoint) = self.config.audit_otlp.as_ref().or(spec.otlp.as_ref()) else {
            return Ok(None);
        };
        #[cfg(feature = "otlp")]
        {
            use crate::audit::{OtlpExporter, OtlpOptions};
            let options = OtlpOptions {
                ca_file: self.config.audit_otlp_ca.clone(),
                ..OtlpOptions::new(endpoint.clone())
            };
            let e = OtlpExporter::start(options).map_err(|e| RunError::Audit {
                source: crate::audit::AuditError::Log {
                    path: PathBuf::from(endpoint),
                    message: e.to_string(),
                },
            })?;
            let e = Arc::new(e);
            lock(&self.exporters).push(e.clone());
            Ok(Some(e))
        }
        #[cfg(not(feature = "otlp"))]
        Err(RunError::Audit {
            source: crate::audit::AuditError::Log {
                path: PathBuf::from(endpoint),
                message: "this build of capgate cannot export over OTLP (feature `otlp`)".into(),
            },
        })
    }

    /// What the OTLP exporters of this host's logs did so far, added up (`None` without
    /// export). After [`Host::close`], the final counts.
    #[cfg(feature = "otlp")]
    pub fn audit_export_stats(&self) -> Option<crate::audit::OtlpStats> {
        let exporters = lock(&self.exporters);
        (!exporters.is_empty()).then(|| {
            exporters
                .iter()
                .fold(crate::audit::OtlpStats::default(), |a, e| {
                    let s = e.stats();
                    crate::audit::OtlpStats {
                        exported: a.exported + s.exported,
                        dropped: a.dropped + s.dropped,
                        failed_attempts: a.failed_attempts + s.failed_attempts,
                    }
                })
        })
    }

    /// Opens `policy`'s audit log now, as its `audit` section says, rather than on the first
    /// run: a fail-closed log that cannot be opened is an error before anything else is done.
    pub fn open_audit(&self, policy: &VerifiedPolicy) -> Result<(), RunError> {
        self.recorder(policy).map(|_| ())
    }

    /// Closes every audit log this host opened (each ends with a final checkpoint) and forgets
    /// the linked apps and callees that wrote to them. Call it once the runs, calls and
    /// `serve` of this host are over; a later run opens the logs again and continues them.
    /// Dropping the host closes them too, ignoring errors.
    pub fn close(&self) -> Result<(), RunError> {
        lock(&self.apps).clear();
        lock(&self.callees).clear();
        let auditors: Vec<_> = lock(&self.auditors).drain().collect();
        let files: Vec<_> = lock(&self.files).drain().collect();
        let mut first = None;
        let auditors: Vec<_> = auditors.into_iter().filter_map(|(_, a)| a).collect();
        // Every fold is written before any sink closes: auditors may share one.
        for a in &auditors {
            a.flush_repeats();
        }
        for a in auditors {
            if let Err(source) = a.close() {
                first.get_or_insert(RunError::Audit { source });
            }
        }
        for (_, sink) in files {
            if let Err(source) = crate::audit::AuditSink::close(&*sink) {
                first.get_or_insert(RunError::Audit { source });
            }
        }
        // Every line is in the local logs now; what is still buffered for export gets a
        // few seconds to go out.
        #[cfg(feature = "otlp")]
        for e in lock(&self.exporters).iter() {
            e.finish(EXPORT_GRACE);
        }
        first.map_or(Ok(()), Err)
    }

    /// Audit records that could not be written so far (failure mode `continue`), across the
    /// logs this host has open (ask before [`Host::close`], which forgets the logs it closes).
    pub fn missed_audit_records(&self) -> u64 {
        lock(&self.auditors)
            .values()
            .flatten()
            .map(|a| a.missed())
            .sum()
    }
}

/// The components of `policy` pulled from OCI registries, with the pinned reference of each.
fn pulled(policy: &VerifiedPolicy) -> BTreeMap<String, String> {
    policy
        .policy()
        .components
        .iter()
        .filter_map(|(name, c)| Some((name.clone(), c.source.clone()?)))
        .collect()
}

/// The record of `change` to `policy`.
fn event(
    policy: &VerifiedPolicy,
    change: PolicyChange,
    source: Option<String>,
    previous: Option<&VerifiedPolicy>,
    reason: Option<String>,
) -> PolicyEvent {
    PolicyEvent {
        kind: PolicyTag::Policy,
        event: change,
        source,
        policy: PolicyRef::of(policy),
        previous: previous.map(PolicyRef::of),
        reason,
        components: match change {
            PolicyChange::Loaded => pulled(policy),
            _ => BTreeMap::new(),
        },
    }
}
