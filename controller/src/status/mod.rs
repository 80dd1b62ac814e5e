//! Status the Kubernetes way (observedGeneration and a `Ready` condition with reason
//! and message) for every resource, one model for both modes: [`kinds`] and
//! [`certificate`] work out each kind's Ready condition and typed `api::*Status`
//! purely; two sinks write it: the status report here (`status.json`, `/status`,
//! `edgemq status`) and the status subresource on a cluster
//! (`kubernetes::context::Context::write_status`).
//!
//! Conditions keep their `lastTransitionTime` unless the status flips, so the
//! report only changes when something really changed.

pub mod certificate;
pub mod kinds;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{Condition, CONDITION_READY};

/// The status of one resource.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Where it was read from (`file:line`), standalone only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions; `Ready` at least.
    pub conditions: Vec<Condition>,
    /// Kind-specific details (listeners and counters of a Broker; validity and
    /// serial of a Certificate).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl ResourceStatus {
    /// The Ready condition, if set.
    pub fn ready(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == CONDITION_READY)
    }

    /// `Kind/namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A Ready condition, keeping the transition time of `previous` when the status
/// did not flip.
pub fn ready_condition(
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: &str,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    Condition {
        type_: CONDITION_READY.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time,
        observed_generation: generation,
    }
}

/// The state of the configuration folder.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Whether the folder's current content is valid.
    pub valid: bool,
    /// Errors of the current content (`file:line: Kind/name: message`).
    #[serde(default)]
    pub errors: Vec<String>,
    /// When the running config was applied (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Milliseconds from the change being seen to it being applied, last time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_millis: Option<u64>,
}

/// Everything `edgemq status` shows.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The configuration folder.
    pub config: ConfigStatus,
    /// Every resource, sorted by kind, namespace and name.
    pub resources: Vec<ResourceStatus>,
    /// The followed repository (`edgemq run --git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<crate::source::follow::GitStatus>,
}

impl StatusReport {
    /// Previous conditions by resource key, to keep transition times.
    pub fn previous(&self) -> BTreeMap<String, Condition> {
        self.resources
            .iter()
            .filter_map(|r| r.ready().map(|c| (r.key(), c.clone())))
            .collect()
    }

    /// A table for people: KIND, NAME, READY, REASON, MESSAGE.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "KIND".to_string(),
            "NAMESPACE".into(),
            "NAME".into(),
            "READY".into(),
            "REASON".into(),
            "MESSAGE".into(),
        ]];
        for r in &self.resources {
            let (status, reason, message) = r
                .ready()
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
                .unwrap_or_else(|| ("Unknown".into(), String::new(), String::new()));
            rows.push([
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                status,
                reason,
                message,
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        if let Some(g) = &self.git {
            out.push_str(&git_lines(g));
        }
        if !self.config.valid {
            out.push_str("configuration has errors (an object with errors keeps its last good version, or stays out if it never had one):\n");
            for e in &self.config.errors {
                out.push_str("  ");
                out.push_str(e);
                out.push('\n');
            }
            out.push('\n');
        }
        for r in rows {
            for (i, w) in widths.iter().enumerate() {
                out.push_str(&format!("{:<w$}  ", r[i], w = w));
            }
            out.push_str(&r[5]);
            out.push('\n');
        }
        out
    }
}

/// The repository lines of `edgemq status`.
fn git_lines(g: &crate::source::follow::GitStatus) -> String {
    let mut out = format!("git: {} branch {} folder {}\n", g.url, g.branch, g.path);
    match &g.applied {
        Some(a) => out.push_str(&format!(
            "  applied:     {} signed by {} (applied {})\n",
            a.commit, a.signer, a.applied_at
        )),
        None => out.push_str("  applied:     nothing yet\n"),
    }
    if let Some(h) = &g.remote_head {
        out.push_str(&format!("  remote head: {h}"));
        match &g.fetched_from {
            Some(from) if !g.remotes.is_empty() => out.push_str(&format!(" from {from}\n")),
            _ => out.push('\n'),
        }
    }
    for e in &g.remote_errors {
        out.push_str(&format!("  remote down: {e}\n"));
    }
    if let Some(t) = &g.last_fetch_at {
        out.push_str(&format!("  last fetch:  {t}"));
        match &g.last_fetch_error {
            Some(e) => out.push_str(&format!(" failed: {e}\n")),
            None => out.push_str(" ok\n"),
        }
    }
    if let Some(r) = &g.refused {
        out.push_str(&format!("  refused:     {}\n", r.message));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_does_not_flip() {
        let first = ready_condition(true, "Running", "", Some(1), None, "t1");
        let same = ready_condition(true, "Running", "still", Some(2), Some(&first), "t2");
        assert_eq!(same.last_transition_time.as_deref(), Some("t1"));
        let flipped = ready_condition(false, "InvalidConfig", "x", Some(2), Some(&same), "t3");
        assert_eq!(flipped.last_transition_time.as_deref(), Some("t3"));
    }
}
