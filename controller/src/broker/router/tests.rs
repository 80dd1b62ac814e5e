use std::time::Duration;

use super::*;
use crate::broker::types::CloseReason;
use crate::plan::AclPlan;

fn router() -> Router {
    router_with(RouterLimits::default())
}

/// A router with `limits`, no ACL rules and detached metrics (also for `limits_tests`).
pub(super) fn router_with(limits: RouterLimits) -> Router {
    let acl = Arc::new(Acl::new(&AclPlan::default()));
    Router::new("test", acl, limits, BrokerMetrics::detached())
}

fn msg(topic: &str, qos: u8, retain: bool, payload: &str) -> Message {
    Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: None,
        origin: None,
        expires_at: None,
    }
}

pub(super) fn sub(qos: u8) -> SubOptions {
    SubOptions {
        qos,
        ..SubOptions::default()
    }
}

fn drain(r: &mut Router, id: &str, conn: u64) -> Vec<Outgoing> {
    let mut out = Vec::new();
    r.next_outgoing(id, conn, 1000, &mut out);
    out
}

#[test]
fn a_qos0_publish_reaches_a_qos2_subscriber_at_qos0() {
    let mut r = router();
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "a/#", sub(2));
    assert_eq!(r.publish(msg("a/b", 0, false, "x")), 1);
    match &drain(&mut r, "s", 1)[..] {
        [Outgoing::Publish {
            delivery, pkid: 0, ..
        }] => assert_eq!(delivery.qos, 0),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_qos2_publish_reaches_a_qos1_subscriber_at_qos1() {
    let mut r = router();
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "a/+", sub(1));
    r.publish(msg("a/b", 2, false, "x"));
    match &drain(&mut r, "s", 1)[..] {
        [Outgoing::Publish { delivery, pkid, .. }] => {
            assert_eq!(delivery.qos, 1);
            assert!(*pkid > 0);
            assert!(r.puback("s", *pkid));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn wildcards_do_not_match_dollar_topics_at_the_first_level() {
    let mut r = router();
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "#", sub(0));
    r.subscribe(&id, "+/x", sub(0));
    assert_eq!(r.publish(msg("$SYS/x", 0, false, "x")), 0);
    r.subscribe(&id, "$SYS/#", sub(0));
    assert_eq!(r.publish(msg("$SYS/x", 0, false, "x")), 1);
}

#[test]
fn a_full_queue_drops_and_counts_new_messages() {
    let mut r = router();
    r.set_limits(RouterLimits {
        max_queued: 3,
        ..RouterLimits::default()
    });
    let id: Arc<str> = "slow".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "t", sub(0));
    for i in 0..10 {
        r.publish(msg("t", 0, false, &i.to_string()));
    }
    assert_eq!(r.dropped("slow"), 7);
    assert_eq!(drain(&mut r, "slow", 1).len(), 3);
}

#[test]
fn retained_messages_are_sent_on_subscribe_and_cleared_by_an_empty_retained_publish() {
    let mut r = router();
    r.publish(msg("home/temp", 1, true, "21"));
    r.publish(msg("home/temp", 0, false, ""));
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "home/#", sub(1));
    let out = drain(&mut r, "s", 1);
    assert_eq!(
        out.len(),
        1,
        "an empty non-retained publish must not clear the retained message"
    );
    r.publish(msg("home/temp", 0, true, ""));
    assert_eq!(r.stats().retained, 0);
}

#[test]
fn retained_messages_on_subscribe_are_paced_by_the_window_not_dropped_at_the_queue_bound() {
    let mut r = router();
    r.set_limits(RouterLimits {
        max_queued: 10,
        ..RouterLimits::default()
    });
    for i in 0..3000 {
        r.publish(msg(
            &format!("homeassistant/sensor/{i}/config"),
            1,
            true,
            "{}",
        ));
    }
    let id: Arc<str> = "ha".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "homeassistant/#", sub(1));
    // A live message published after the SUBSCRIBE comes after every retained one.
    r.publish(msg("homeassistant/status", 1, false, "online"));
    assert_eq!(r.stats().queued, 3001);
    let mut got = 0;
    loop {
        let out = drain(&mut r, "ha", 1);
        assert!(
            out.len() <= 20,
            "the in-flight window paces retained messages"
        );
        if out.is_empty() {
            break;
        }
        for o in out {
            let Outgoing::Publish { delivery, pkid, .. } = o else {
                panic!("unexpected {o:?}")
            };
            got += 1;
            assert_eq!(delivery.retain, got <= 3000);
            assert!(r.puback("ha", pkid));
        }
    }
    assert_eq!((got, r.dropped("ha")), (3001, 0));
}

#[test]
fn a_persistent_session_keeps_qos1_messages_and_resends_inflight_after_reconnect() {
    let mut r = router();
    let id: Arc<str> = "p".into();
    r.connect(&id, None, false, 3600, 20, ConnLink::new(1))
        .unwrap();
    r.subscribe(&id, "t", sub(1));
    r.publish(msg("t", 1, false, "one"));
    assert_eq!(drain(&mut r, "p", 1).len(), 1); // in flight, never acked
    r.disconnect("p", 1, None);
    r.publish(msg("t", 1, false, "two"));
    r.publish(msg("t", 0, false, "qos0 is not queued offline"));
    let c = r
        .connect(&id, None, false, 3600, 20, ConnLink::new(2))
        .unwrap();
    assert!(c.session_present);
    let out = drain(&mut r, "p", 2);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Outgoing::Publish { dup: true, .. }));
    assert!(matches!(out[1], Outgoing::Publish { dup: false, .. }));
}

#[test]
fn persistent_sessions_survive_a_snapshot_and_restore() {
    let mut r = router();
    let id: Arc<str> = "p".into();
    r.connect(&id, Some("u".into()), false, 3600, 20, ConnLink::new(1))
        .unwrap();
    r.subscribe(&id, "t/#", sub(2));
    r.publish(msg("t/1", 1, false, "inflight"));
    r.publish(msg("t/2", 2, false, "released"));
    let out = drain(&mut r, "p", 1);
    let Outgoing::Publish { pkid: released, .. } = out[1] else {
        panic!()
    };
    assert!(r.pubrec("p", released));
    assert!(r.qos2_received("p", 9));
    r.disconnect("p", 1, None);
    for i in 0..500 {
        r.publish(msg("t/q", 1, false, &i.to_string()));
    }
    let clean: Arc<str> = "clean".into();
    r.connect(&clean, None, true, 0, 20, ConnLink::new(2))
        .unwrap();
    let saved = r.snapshot_sessions(Instant::now());
    assert_eq!(saved.len(), 1, "clean sessions are not saved");

    let mut r2 = router();
    assert_eq!(r2.restore_sessions(saved), (1, 502));
    let c = r2
        .connect(&id, Some("u".into()), false, 3600, 20, ConnLink::new(3))
        .unwrap();
    assert!(c.session_present);
    assert!(
        !r2.qos2_received("p", 9),
        "a QoS 2 id received before is remembered"
    );
    r2.publish(msg("t/live", 0, false, "live"));
    let mut got = Vec::new();
    loop {
        let out = drain(&mut r2, "p", 3);
        if out.is_empty() {
            break;
        }
        for o in out {
            match o {
                Outgoing::Publish {
                    delivery,
                    pkid,
                    dup,
                } => {
                    got.push((delivery.msg.payload.clone(), dup));
                    if pkid != 0 {
                        r2.puback("p", pkid);
                    }
                }
                Outgoing::PubRel(p) => {
                    assert_eq!(p, released);
                    r2.pubcomp("p", p);
                }
            }
        }
    }
    assert_eq!(got[0], (Bytes::from("inflight"), true));
    let queued: Vec<_> = got[1..501].iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        queued,
        (0..500)
            .map(|i| Bytes::from(i.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(got.len(), 502);
}

#[test]
fn an_expired_message_is_not_delivered_live_queued_or_retained() {
    let mut r = router();
    let past = Instant::now() - Duration::from_secs(1);
    let mut gone = msg("t/old", 1, true, "expired");
    gone.expires_at = Some(past);
    r.publish(gone);
    let id: Arc<str> = "s".into();
    r.connect(&id, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&id, "t/#", sub(1));
    let mut late = msg("t/x", 1, false, "late");
    late.expires_at = Some(past);
    r.publish(late);
    let mut fresh = msg("t/x", 1, false, "fresh");
    fresh.expires_at = Some(Instant::now() + Duration::from_secs(60));
    r.publish(fresh);
    let out = drain(&mut r, "s", 1);
    assert_eq!(out.len(), 1);
    let Outgoing::Publish { delivery, .. } = &out[0] else {
        panic!()
    };
    assert_eq!(&delivery.msg.payload[..], b"fresh");
}

#[test]
fn a_shared_subscribe_gets_no_retained_messages_and_its_group_one_copy_per_message() {
    let mut r = router();
    r.publish(msg("jobs/old", 1, true, "retained"));
    for (i, id) in ["a", "b"].into_iter().enumerate() {
        let id: Arc<str> = id.into();
        r.connect(&id, None, true, 0, 20, ConnLink::new(i as u64))
            .unwrap();
        r.subscribe(&id, "$share/g/jobs/#", sub(1));
    }
    assert_eq!(
        r.stats().queued,
        0,
        "no retained message on a shared subscribe"
    );
    for i in 0..4 {
        assert_eq!(r.publish(msg("jobs/new", 1, false, &i.to_string())), 1);
    }
    assert_eq!(
        (drain(&mut r, "a", 0).len(), drain(&mut r, "b", 1).len()),
        (2, 2)
    );
    r.disconnect("a", 0, None);
    r.publish(msg("jobs/new", 1, false, "after a left"));
    assert_eq!(drain(&mut r, "b", 1).len(), 1);
}

#[test]
fn subscription_identifiers_are_delivered_and_kept_in_a_saved_session() {
    let mut r = router();
    let id: Arc<str> = "p".into();
    r.connect(&id, None, false, 3600, 20, ConnLink::new(1))
        .unwrap();
    let with_id = |n| SubOptions {
        id: Some(n),
        ..sub(1)
    };
    r.subscribe(&id, "t/#", with_id(3));
    r.subscribe(&id, "t/+", with_id(9));
    r.disconnect("p", 1, None);
    let mut r2 = router();
    r2.restore_sessions(r.snapshot_sessions(Instant::now()));
    r2.connect(&id, None, false, 3600, 20, ConnLink::new(2))
        .unwrap();
    r2.publish(msg("t/x", 1, false, "x"));
    let out = drain(&mut r2, "p", 2);
    let [Outgoing::Publish { delivery, .. }] = &out[..] else {
        panic!("unexpected {out:?}")
    };
    let mut ids = delivery.sub_ids.clone();
    ids.sort();
    assert_eq!(ids, [3, 9]);
}

#[test]
fn a_delayed_will_is_held_and_a_reconnect_within_the_delay_cancels_it() {
    let mut r = router();
    let (w, id): (Arc<str>, Arc<str>) = ("watcher".into(), "dev".into());
    r.connect(&w, None, true, 0, 20, ConnLink::new(1)).unwrap();
    r.subscribe(&w, "will/#", sub(1));
    for conn in [2, 3] {
        r.connect(&id, None, false, 60, 20, ConnLink::new(conn))
            .unwrap();
        r.disconnect("dev", conn, None);
        r.will(&id, msg("will/dev", 1, false, "gone"), 30, None);
        assert!(drain(&mut r, "watcher", 1).is_empty(), "held for its delay");
    }
    r.connect(&id, None, false, 60, 20, ConnLink::new(4))
        .unwrap();
    assert_eq!(
        r.publish_due_wills(Instant::now() + Duration::from_secs(31)),
        0
    );
    r.disconnect("dev", 4, None);
    r.will(&id, msg("will/dev", 1, false, "gone"), 30, None);
    assert_eq!(
        r.publish_due_wills(Instant::now() + Duration::from_secs(31)),
        1
    );
    assert_eq!(drain(&mut r, "watcher", 1).len(), 1);
}

#[test]
fn trie_nodes_and_sessions_are_freed_when_clients_go() {
    let mut r = router();
    for i in 0..100 {
        let id: Arc<str> = format!("c{i}").into();
        r.connect(&id, None, false, 1, 20, ConnLink::new(i))
            .unwrap();
        r.subscribe(&id, &format!("t/{i}/+"), sub(1));
        r.disconnect(&id, i, None);
    }
    assert!(r.stats().trie_nodes > 100);
    r.expire_sessions(Instant::now() + Duration::from_secs(2));
    assert_eq!(r.stats().sessions, 0);
    assert_eq!(r.stats().trie_nodes, 1);
}

#[test]
fn a_session_takeover_kicks_the_old_connection() {
    let mut r = router();
    let id: Arc<str> = "dup".into();
    let first = ConnLink::new(1);
    r.connect(&id, None, true, 0, 20, first.clone()).unwrap();
    r.connect(&id, None, true, 0, 20, ConnLink::new(2)).unwrap();
    assert_eq!(first.close_reason(), Some(CloseReason::SessionTakenOver));
    // The old connection's late disconnect must not remove the new session.
    r.disconnect("dup", 1, None);
    assert_eq!(r.stats().connected, 1);
}
