//! The status subresource sink's comparisons: what an object shows, and whether a
//! wanted status is already shown (then nothing is written). The status itself is
//! worked out purely in [`edgemq::status::kinds`], the same for both modes.
//!
//! Each writer owns its fields through server-side apply: the controller owns
//! `observedGeneration`, `conditions` and the fields below; the broker pod owns what
//! only it can see (`configHash`, `connections`, a Bridge's link state).

use serde_json::Value;

use edgemq::api::Condition;

/// The previous Ready condition in a status value.
pub fn previous_ready(status: Option<&Value>) -> Option<Condition> {
    let conds = status?.get("conditions")?.as_array()?;
    conds
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == edgemq::api::CONDITION_READY)
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

#[cfg(test)]
mod tests {
    use super::*;
    use edgemq::api::BrokerStatus;
    use edgemq::status::kinds::with_ready;
    use serde_json::json;

    fn status(
        current: Option<&Value>,
        generation: i64,
        ready: (bool, &str, String),
        now: &str,
    ) -> Value {
        let previous = previous_ready(current);
        let s = with_ready(
            BrokerStatus::default(),
            ready,
            Some(generation),
            previous.as_ref(),
            now,
        );
        serde_json::to_value(s).unwrap()
    }

    #[test]
    fn a_status_that_only_repeats_itself_is_not_written_again() {
        let now = "2026-01-01T00:00:00Z";
        let first = status(None, 3, (true, "Running", "ok".into()), now);
        let later = status(
            Some(&first),
            3,
            (true, "Running", "ok".into()),
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
        let up = status(None, 1, (true, "Running", "ok".into()), t0);
        let down = status(Some(&up), 1, (false, "PodNotReady", "x".into()), t1);
        assert_eq!(down["conditions"][0]["lastTransitionTime"], t1);
        assert!(!shows(Some(&up), &down));
        let next_gen = status(Some(&up), 2, (true, "Running", "ok".into()), t1);
        assert_eq!(next_gen["conditions"][0]["lastTransitionTime"], t0);
        assert!(!shows(Some(&up), &next_gen));
    }
}
