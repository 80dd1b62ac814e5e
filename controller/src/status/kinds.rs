//! The Ready condition of each kind, worked out once for both modes from what was
//! observed, and the typed status it goes into (`api::*Status`).
//!
//! ```text
//!  observed state ──► BrokerState / UserState / bridge link / certificate result
//!                         │ pure: the same reason words in both modes
//!                         ▼
//!                 Ready (status, reason, message) ──► api::*Status
//!                         ├── standalone: status.json, /status, `edgemq status`
//!                         └── kubernetes: the status subresource, only when changed
//! ```
//!
//! The reason words are the constants in [`reason`]; the README lists them.

use serde::Serialize;

use crate::api::common::CommonStatus;
use crate::api::{BridgeStatus, BrokerStatus, CertificateStatus, Condition, MqttUserStatus};

/// The reason words of the `Ready` condition, the same in `edgemq status` and on a
/// cluster.
pub mod reason {
    /// Any kind: the object has a mistake; it keeps its last good version or stays out.
    pub const INVALID_SPEC: &str = "InvalidSpec";

    /// Broker: it runs the current configuration.
    pub const RUNNING: &str = "Running";
    /// Broker (cluster): the pod does not run the current configuration yet.
    pub const APPLYING: &str = "Applying";
    /// Broker (cluster): no pod is ready yet.
    pub const POD_NOT_READY: &str = "PodNotReady";
    /// Broker: applying its configuration failed; what ran before keeps running.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Broker (standalone): it could not start (a port in use, a missing certificate).
    pub const START_FAILED: &str = "StartFailed";
    /// Broker (cluster): one of its objects' names belongs to someone else.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// Broker (cluster): `spec.pod.image` is not one the installer allows.
    pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
    /// Broker, MqttUser, Bridge: not applied yet.
    pub const PENDING: &str = "Pending";

    /// MqttUser: it can log in.
    pub const ACTIVE: &str = "Active";
    /// MqttUser: no Broker of the name in `brokerRef`.
    pub const BROKER_NOT_FOUND: &str = "BrokerNotFound";
    /// MqttUser: its Broker has mistakes and never ran.
    pub const BROKER_INVALID: &str = "BrokerInvalid";
    /// MqttUser: its Broker failed to apply its configuration.
    pub const BROKER_NOT_READY: &str = "BrokerNotReady";

    /// Bridge: the link to the remote is up.
    pub const CONNECTED: &str = "Connected";
    /// Bridge: the first connection attempt is under way.
    pub const CONNECTING: &str = "Connecting";
    /// Bridge: the link is down; messages are queued.
    pub const DISCONNECTED: &str = "Disconnected";
    /// Bridge: its runtime configuration cannot be made (a missing certificate).
    pub const CONFIG_ERROR: &str = "ConfigError";
}

/// Ready (True or False), reason and message of a condition.
pub type Ready = (bool, &'static str, String);

/// The typed status of a kind: where its conditions live.
pub trait Conditions: Serialize + Default {
    /// observedGeneration and conditions.
    fn common_mut(&mut self) -> &mut CommonStatus;
}

macro_rules! conditions {
    ($($t:ty),*) => {$(
        impl Conditions for $t {
            fn common_mut(&mut self) -> &mut CommonStatus {
                &mut self.common
            }
        }
    )*};
}
conditions!(
    BrokerStatus,
    MqttUserStatus,
    BridgeStatus,
    CertificateStatus
);

/// `fields` with observedGeneration and its Ready condition, keeping the transition
/// time of `previous` unless the status flipped.
pub fn with_ready<S: Conditions>(
    mut fields: S,
    ready: (bool, &str, String),
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: &str,
) -> S {
    let cond = super::ready_condition(ready.0, ready.1, &ready.2, generation, previous, now);
    let common = fields.common_mut();
    common.observed_generation = generation;
    common.conditions = vec![cond];
    fields
}

/// Why a Broker is or is not Ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerState {
    /// Its configuration has mistakes; what runs (a hash, if known) keeps running.
    InvalidSpec {
        /// The validation messages, as `edgemq validate` prints them.
        errors: Vec<String>,
        /// Hash of the configuration the pod runs now (cluster).
        running: Option<String>,
    },
    /// Applying its configuration failed (the message says what runs instead).
    ApplyFailed(String),
    /// It could not start at all.
    StartFailed(String),
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
    /// Not started yet.
    Pending,
    /// It runs the current configuration (standalone: with this many listeners).
    Running {
        /// Listeners it serves, when known.
        listeners: Option<usize>,
    },
}

/// Ready, reason and message of a Broker; `desired` is the hash of its current
/// configuration.
pub fn broker_ready(state: &BrokerState, desired: Option<&str>) -> Ready {
    let short = |h: &str| h.chars().take(12).collect::<String>();
    match state {
        BrokerState::InvalidSpec { errors, running } => (
            false,
            reason::INVALID_SPEC,
            format!(
                "{}{}",
                errors.join("; "),
                running
                    .as_deref()
                    .map(|h| format!("; the pod keeps running configuration {}", short(h)))
                    .unwrap_or_default()
            ),
        ),
        BrokerState::ApplyFailed(e) => (false, reason::APPLY_FAILED, e.clone()),
        BrokerState::StartFailed(e) => (false, reason::START_FAILED, e.clone()),
        BrokerState::NameConflict(e) => (false, reason::NAME_CONFLICT, e.clone()),
        BrokerState::ImageNotAllowed(e) => (false, reason::IMAGE_NOT_ALLOWED, e.clone()),
        BrokerState::PodNotReady => (
            false,
            reason::POD_NOT_READY,
            "waiting for the broker pod to be ready".into(),
        ),
        BrokerState::Applying { running } => (
            false,
            reason::APPLYING,
            format!(
                "the pod is applying configuration {}{}",
                desired.map(short).unwrap_or_default(),
                running
                    .as_deref()
                    .map(|h| format!(" (running {})", short(h)))
                    .unwrap_or_default()
            ),
        ),
        BrokerState::Pending => (false, reason::PENDING, "not started yet".into()),
        BrokerState::Running { listeners: Some(n) } => (
            true,
            reason::RUNNING,
            format!(
                "{n} listener(s), config {}",
                desired.map(short).unwrap_or_default()
            ),
        ),
        BrokerState::Running { listeners: None } => (
            true,
            reason::RUNNING,
            format!(
                "running configuration {}",
                desired.map(short).unwrap_or_default()
            ),
        ),
    }
}

/// Why an MqttUser can or cannot log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserState {
    /// The user has mistakes (the message says what runs instead).
    InvalidSpec(String),
    /// No Broker of that name.
    BrokerNotFound,
    /// Its Broker has mistakes and never ran: why.
    BrokerInvalid(String),
    /// Its Broker failed to apply its configuration.
    BrokerNotReady,
    /// Its Broker has not applied it yet.
    Pending,
    /// It can log in.
    Active,
}

/// Ready, reason and message of an MqttUser of Broker `broker`.
pub fn user_ready(state: &UserState, broker: &str) -> Ready {
    match state {
        UserState::InvalidSpec(m) => (false, reason::INVALID_SPEC, m.clone()),
        UserState::BrokerNotFound => (
            false,
            reason::BROKER_NOT_FOUND,
            format!("Broker {broker} not found"),
        ),
        UserState::BrokerInvalid(why) => (
            false,
            reason::BROKER_INVALID,
            format!("Broker {broker} does not run: {why}"),
        ),
        UserState::BrokerNotReady => (
            false,
            reason::BROKER_NOT_READY,
            format!("Broker {broker} did not apply its configuration"),
        ),
        UserState::Pending => (
            false,
            reason::PENDING,
            format!("waiting for Broker {broker} to apply it"),
        ),
        UserState::Active => (
            true,
            reason::ACTIVE,
            format!("can log in to Broker {broker}"),
        ),
    }
}

/// The Ready condition of a running bridge.
pub fn bridge_ready(st: &crate::bridge::BridgeRuntimeStatus) -> Ready {
    if st.connected {
        (
            true,
            reason::CONNECTED,
            format!("connected to {}; {} queued", st.remote, st.queue_depth),
        )
    } else {
        match &st.last_error {
            Some(e) => (
                false,
                reason::DISCONNECTED,
                format!("{e}; {} message(s) queued, retrying", st.queue_depth),
            ),
            None => (
                false,
                reason::CONNECTING,
                format!("connecting to {}", st.remote),
            ),
        }
    }
}

/// A running Bridge's status: its link and queue.
pub fn bridge_status(
    st: &crate::bridge::BridgeRuntimeStatus,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: &str,
) -> BridgeStatus {
    let fields = BridgeStatus {
        connected: Some(st.connected),
        remote: Some(st.remote.clone()),
        queue_depth: Some(st.queue_depth),
        queue_bytes: Some(st.queue_bytes),
        forwarded_out: Some(st.forwarded_out),
        forwarded_in: Some(st.forwarded_in),
        dropped: Some(st.dropped),
        since: st.since.clone(),
        last_error: st.last_error.clone(),
        last_error_time: st.last_error_time.clone(),
        ..Default::default()
    };
    with_ready(fields, bridge_ready(st), generation, previous, now)
}

/// The status of a Bridge that cannot run (its queue cannot be opened, its TLS
/// material is unusable).
pub fn bridge_error_status(
    error: &str,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: &str,
) -> BridgeStatus {
    let fields = BridgeStatus {
        connected: Some(false),
        ..Default::default()
    };
    with_ready(
        fields,
        (false, reason::CONFIG_ERROR, error.to_string()),
        generation,
        previous,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_user_of_a_broker_that_never_ran_says_so_in_both_modes() {
        let (ready, reason, message) =
            user_ready(&UserState::BrokerInvalid("Broker/home: bad".into()), "home");
        assert!(!ready);
        assert_eq!(reason, "BrokerInvalid");
        assert_eq!(message, "Broker home does not run: Broker/home: bad");
        assert_eq!(
            user_ready(&UserState::BrokerNotFound, "x").1,
            "BrokerNotFound"
        );
    }

    #[test]
    fn the_typed_status_carries_generation_and_one_ready_condition() {
        let s = with_ready(
            MqttUserStatus {
                username: Some("z".into()),
                ..Default::default()
            },
            (true, reason::ACTIVE, "ok".into()),
            Some(4),
            None,
            "t1",
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["observedGeneration"], 4);
        assert_eq!(v["username"], "z");
        assert_eq!(v["conditions"][0]["reason"], "Active");
        assert_eq!(v["conditions"][0]["lastTransitionTime"], "t1");
        let again = with_ready(
            s.clone(),
            (true, reason::ACTIVE, "ok".into()),
            Some(5),
            s.common.conditions.first(),
            "t2",
        );
        assert_eq!(
            again.common.conditions[0].last_transition_time.as_deref(),
            Some("t1"),
            "no flip, no new transition time"
        );
    }
}
