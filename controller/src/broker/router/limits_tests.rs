//! The byte, session and subscription bounds of the router.

use super::tests::{router_with as router, sub};
use super::*;

fn msg(topic: &str, retain: bool, payload: usize) -> Message {
    Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from(vec![b'x'; payload]),
        qos: 1,
        retain,
        properties: None,
        origin: None,
        expires_at: None,
    }
}

#[test]
fn retained_messages_past_max_retained_bytes_are_not_kept_and_a_replacement_counts_its_own_size() {
    let mut r = router(RouterLimits {
        max_retained_bytes: 100,
        ..RouterLimits::default()
    });
    r.publish(msg("a", true, 49)); // 50 bytes with its topic
    r.publish(msg("b", true, 49)); // 100: at the cap
    r.publish(msg("c", true, 1)); // refused
    assert_eq!(r.stats().retained, 2);
    assert_eq!(r.metrics.refused.retained_bytes.get(), 1);
    // A larger message for a kept topic is refused too, and the old one stays.
    r.publish(msg("a", true, 60));
    assert_eq!(r.retained["a".as_bytes()].payload.len(), 49);
    // Smaller replacements and clears free room.
    r.publish(msg("a", true, 9)); // 10
    r.publish(msg("c", true, 39)); // 40: 100 again
    assert_eq!(r.stats().retained, 3);
    assert_eq!(r.retained_bytes, 100);
    r.publish(msg("b", true, 0));
    assert_eq!(r.retained_bytes, 50);
    assert_eq!(r.metrics.refused.retained_bytes.get(), 2);
}

#[test]
fn a_refused_retained_message_still_reaches_the_subscribers_connected_now() {
    let mut r = router(RouterLimits {
        max_retained_bytes: 10,
        ..RouterLimits::default()
    });
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "#", sub(1));
    assert_eq!(r.publish(msg("big", true, 100)), 1);
    assert_eq!(r.stats().retained, 0);
}

#[test]
fn a_new_persistent_session_past_max_sessions_is_refused_and_nothing_is_kicked() {
    let mut r = router(RouterLimits {
        max_sessions: 2,
        ..RouterLimits::default()
    });
    let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
    r.connect(&a, None, false, 60, 20, ConnLink::new(1))
        .unwrap();
    r.connect(&b, None, false, 60, 20, ConnLink::new(2))
        .unwrap();
    assert_eq!(
        r.connect(&c, None, false, 60, 20, ConnLink::new(3))
            .unwrap_err(),
        ConnectRefused::MaxSessions(2)
    );
    assert_eq!(r.metrics.refused.sessions.get(), 1);
    // Clean sessions and resumed ones are not new persistent sessions.
    r.connect(&c, None, true, 0, 20, ConnLink::new(4)).unwrap();
    let taken = ConnLink::new(5);
    let resumed = r.connect(&a, None, false, 60, 20, taken).unwrap();
    assert!(resumed.session_present);
    assert_eq!(r.stats().sessions, 3);
}

#[test]
fn subscriptions_past_max_subscriptions_are_refused_but_replacing_one_held_is_not() {
    let mut r = router(RouterLimits {
        max_subscriptions: 2,
        ..RouterLimits::default()
    });
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    assert_eq!(
        r.admit_subscriptions("s", [None, Some("a"), Some("b"), Some("b"), Some("c")]),
        [true, true, true, true, false]
    );
    r.subscribe(&id, "a", sub(0));
    r.subscribe(&id, "b", sub(0));
    assert_eq!(
        r.admit_subscriptions("s", [Some("c"), Some("a")]),
        [false, true]
    );
    assert_eq!(r.metrics.refused.subscriptions.get(), 2);
}

#[test]
fn a_queue_past_max_queued_bytes_drops_new_messages_and_frees_bytes_as_it_drains() {
    let mut r = router(RouterLimits {
        max_queued_bytes: 1000,
        ..RouterLimits::default()
    });
    let id: Arc<str> = "slow".into();
    r.connect(&id, None, false, 60, 1, ConnLink::new(1))
        .unwrap();
    r.subscribe(&id, "t", sub(1));
    for _ in 0..5 {
        r.publish(msg("t", false, 299)); // 300 bytes each
    }
    assert_eq!(r.dropped("slow"), 2);
    assert_eq!(r.metrics.refused.queued_bytes.get(), 2);
    assert_eq!(r.sessions["slow"].queued_bytes, 900);
    // One goes in flight (window 1): room for one more.
    let mut out = Vec::new();
    r.next_outgoing("slow", 1, 16, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(r.sessions["slow"].queued_bytes, 600);
    assert_eq!(r.publish(msg("t", false, 299)), 1);
    assert_eq!(r.publish(msg("t", false, 299)), 0);
}

#[test]
fn one_message_larger_than_max_queued_bytes_still_reaches_an_empty_queue() {
    let mut r = router(RouterLimits {
        max_queued_bytes: 100,
        ..RouterLimits::default()
    });
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 1, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "t", sub(1));
    assert_eq!(r.publish(msg("t", false, 500)), 1);
    assert_eq!(r.publish(msg("t", false, 10)), 0);
}

#[test]
fn a_disconnect_cannot_turn_a_session_that_ends_with_its_connection_into_a_kept_one() {
    let mut r = router(RouterLimits {
        max_sessions: 1,
        ..RouterLimits::default()
    });
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    // Expiry 0 at CONNECT: not counted under maxSessions ...
    r.connect(&a, None, false, 0, 20, ConnLink::new(1)).unwrap();
    // ... so a DISCONNECT asking for an hour must not keep it ([MQTT-3.14.2-2]).
    r.disconnect("a", 1, Some(3600));
    assert_eq!(r.stats().sessions, 0);
    r.connect(&b, None, false, 60, 20, ConnLink::new(2))
        .unwrap();
    r.disconnect("b", 2, Some(3600));
    assert_eq!(
        r.stats().sessions,
        1,
        "a kept session may still lengthen its expiry"
    );
}
