//! Status of each kind on a cluster, computed purely from what was observed, and
//! written only when it differs from what the object already shows.
//!
//! Each writer owns its fields through server-side apply: the controller owns
//! `observedGeneration`, `conditions` and the fields below; the broker pod owns what
//! only it can see (`configHash`, `connections`, a Bridge's link state).

use serde_json::{json, Value};

use crate::api::Condition;
use crate::status::ready_condition;

/// Why a Broker is or is not Ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerState {
    /// Its configuration has mistakes; the pod keeps running `running` (a hash), if any.
    InvalidSpec {
        /// The validation messages, as `edgemq validate` prints them.
        errors: Vec<String>,
        /// Hash of the configuration the pod runs now.
        running: Option<String>,
    },
    /// Writing its objects failed.
    ApplyFailed(String),
    /// One of its objects' names is taken by an object that is not the Broker's.
    NameConflict(String),
    /// Its `spec.pod.image` is not one the installer allows: the pod is not changed; one
    /// that runs keeps its image and gets only its bundle and Role (user and ACL
    /// changes).
    ImageNotAllowed(String),
    /// No pod is ready yet.
    PodNotReady,
    /// The pod runs another configuration than the current one.
    Applying {
        /// Hash the pod reported.
        running: Option<String>,
    },
    /// The pod runs the current configuration.
    Running,
}

/// Ready, reason and message of a Broker.
pub fn broker_ready(state: &BrokerState, desired: Option<&str>) -> (bool, &'static str, String) {
    let short = |h: &str| h.chars().take(12).collect::<String>();
    match state {
        BrokerState::InvalidSpec { errors, running } => (
            false,
            "InvalidSpec",
            format!(
                "{}{}",
                errors.join("; "),
                running
                    .as_deref()
                    .map(|h| format!("; the pod keeps running configuration {}", short(h)))
                    .unwrap_or_default()
            ),
        ),
        BrokerState::ApplyFailed(e) => (false, "ApplyFailed", e.clone()),
        BrokerState::NameConflict(e) => (false, "NameConflict", e.clone()),
        BrokerState::ImageNotAllowed(e) => (false, super::trust::IMAGE_NOT_ALLOWED, e.clone()),
        BrokerState::PodNotReady => (
            false,
            "PodNotReady",
            "waiting for the broker pod to be ready".into(),
        ),
        BrokerState::Applying { running } => (
            false,
            "Applying",
            format!(
                "the pod is applying configuration {}{}",
                desired.map(short).unwrap_or_default(),
                running
                    .as_deref()
                    .map(|h| format!(" (running {})", short(h)))
                    .unwrap_or_default()
            ),
        ),
        BrokerState::Running => (
            true,
            "Running",
            format!(
                "running configuration {}",
                desired.map(short).unwrap_or_default()
            ),
        ),
    }
}

/// The previous Ready condition in a status value.
pub fn previous_ready(status: Option<&Value>) -> Option<Condition> {
    let conds = status?.get("conditions")?.as_array()?;
    conds
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == crate::api::CONDITION_READY)
}

/// The controller's part of a status: `observedGeneration`, `Ready` (keeping its
/// transition time unless it flipped) and `extra` fields.
pub fn controller_status(
    current: Option<&Value>,
    generation: Option<i64>,
    ready: (bool, &str, String),
    extra: serde_json::Map<String, Value>,
    now: &str,
) -> Value {
    let previous = previous_ready(current);
    let cond = ready_condition(
        ready.0,
        ready.1,
        &ready.2,
        generation,
        previous.as_ref(),
        now,
    );
    let mut status = serde_json::Map::new();
    if let Some(g) = generation {
        status.insert("observedGeneration".into(), json!(g));
    }
    status.insert("conditions".into(), json!([cond]));
    status.extend(extra);
    Value::Object(status)
}

/// Whether `current` already shows every field of `wanted` (so writing would change
/// nothing). Fields other writers own are not compared.
pub fn shows(current: Option<&Value>, wanted: &Value) -> bool {
    let Some(current) = current else {
        return false;
    };
    match (current, wanted) {
        (Value::Object(c), Value::Object(w)) => w.iter().all(|(k, v)| shows(c.get(k), v)),
        (Value::Array(c), Value::Array(w)) => {
            c.len() == w.len() && c.iter().zip(w).all(|(c, w)| shows(Some(c), w))
        }
        (c, w) => c == w,
    }
}

/// The fields of an issuer's `details` that a Certificate's status declares (`declared`),
/// without nulls and without a zero `failures`: what does not move with the clock, so an
/// unchanged Certificate is not written again.
pub fn declared_fields(details: &Value, declared: &[&str]) -> serde_json::Map<String, Value> {
    details
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| declared.contains(&k.as_str()) && !v.is_null())
        .filter(|(k, v)| !(k.as_str() == "failures" && **v == serde_json::json!(0)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_that_only_repeats_itself_is_not_written_again() {
        let now = "2026-01-01T00:00:00Z";
        let first = controller_status(
            None,
            Some(3),
            (true, "Running", "ok".into()),
            Default::default(),
            now,
        );
        let later = controller_status(
            Some(&first),
            Some(3),
            (true, "Running", "ok".into()),
            Default::default(),
            "2026-01-01T00:05:00Z",
        );
        assert!(
            shows(Some(&first), &later),
            "same status, kept transition time: {later}"
        );
        let mut with_pod_fields = first.clone();
        with_pod_fields["configHash"] = json!("abc");
        assert!(
            shows(Some(&with_pod_fields), &later),
            "other writers' fields are not compared"
        );
    }

    #[test]
    fn a_flip_moves_the_transition_time_and_a_new_generation_is_written() {
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:05:00Z";
        let up = controller_status(
            None,
            Some(1),
            (true, "Running", "ok".into()),
            Default::default(),
            t0,
        );
        let down = controller_status(
            Some(&up),
            Some(1),
            (false, "PodNotReady", "x".into()),
            Default::default(),
            t1,
        );
        assert_eq!(down["conditions"][0]["lastTransitionTime"], t1);
        assert!(!shows(Some(&up), &down));
        let next_gen = controller_status(
            Some(&up),
            Some(2),
            (true, "Running", "ok".into()),
            Default::default(),
            t1,
        );
        assert_eq!(next_gen["conditions"][0]["lastTransitionTime"], t0);
        assert!(!shows(Some(&up), &next_gen));
    }

    #[test]
    fn an_invalid_broker_says_what_is_wrong_and_what_keeps_running() {
        let (ready, reason, message) = broker_ready(
            &BrokerState::InvalidSpec {
                errors: vec!["MqttUser/bob: username `z` is already used".into()],
                running: Some("0123456789abcdef".into()),
            },
            None,
        );
        assert!(!ready);
        assert_eq!(reason, "InvalidSpec");
        assert_eq!(
            message,
            "MqttUser/bob: username `z` is already used; the pod keeps running configuration 0123456789ab"
        );
    }
}
