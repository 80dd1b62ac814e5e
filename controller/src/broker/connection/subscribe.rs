//! SUBSCRIBE and UNSUBSCRIBE from a client.

use std::sync::atomic::Ordering;

use rumqttd::protocol::{
    Filter, Packet, RetainForwardRule, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode,
    UnsubAck, UnsubAckReason, Unsubscribe,
};

use super::super::codec;
use super::super::router::denial_reason;
use super::super::shared_subs;
use super::super::types::SubOptions;
use super::super::Shared;
use super::{Client, End, Handler};
use crate::auth::acl::{valid_topic_filter, Op};

impl Handler<'_> {
    /// SUBSCRIBE: each filter is judged (well-formed, readable under the ACL, room
    /// under `maxSubscriptionsPerClient`), the SUBACK says how each fared, and the
    /// accepted ones are subscribed after it, so retained messages follow the SUBACK.
    pub(super) fn subscribe(
        &mut self,
        sub: Subscribe,
        sub_props: Option<SubscribeProperties>,
    ) -> Result<(), End> {
        let (shared, client) = (self.shared, self.client);
        let v5 = self.v5();
        let id = sub_props.and_then(|p| p.id).map(|id| id as u32);
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut accepted = Vec::new();
        // Each filter: malformed (None), or whether the ACL lets its user read
        // some topic of it. Only valid, readable filters ask for room under
        // maxSubscriptionsPerClient.
        let acl = shared.router().acl().clone();
        let judged: Vec<Option<bool>> = sub
            .filters
            .iter()
            .map(|f| match shared_subs::parse(&f.path) {
                Ok(shared_sub) if valid_topic_filter(&f.path) => {
                    let filter = match shared_sub {
                        Some((_, filter)) => filter,
                        None => &f.path,
                    };
                    Some(acl.may_subscribe(client.username.as_deref(), &client.id, filter))
                }
                _ => None,
            })
            .collect();
        let fits = shared.router().admit_subscriptions(
            &client.id,
            sub.filters
                .iter()
                .zip(&judged)
                .map(|(f, j)| (*j == Some(true)).then_some(f.path.as_str())),
        );
        for ((f, judged), fits) in sub.filters.iter().zip(judged).zip(fits) {
            let code = if judged.is_none() {
                if v5 {
                    SubscribeReasonCode::TopicFilterInvalid
                } else {
                    SubscribeReasonCode::Failure
                }
            } else if judged == Some(false) {
                // No topic of the filter may be read: refused, as a share group
                // must not hand messages to a member that may not receive them.
                subscribe_denied(shared, client, &f.path);
                if v5 {
                    SubscribeReasonCode::NotAuthorized
                } else {
                    SubscribeReasonCode::Failure
                }
            } else if !fits {
                // maxSubscriptionsPerClient, counted by the router.
                if v5 {
                    SubscribeReasonCode::QuotaExceeded
                } else {
                    SubscribeReasonCode::Failure
                }
            } else {
                let opts = sub_options(f, client, v5, id);
                accepted.push((f.path.clone(), opts));
                granted(opts.qos, v5)
            };
            codes.push(code);
        }
        self.send(Packet::SubAck(
            SubAck {
                pkid: sub.pkid,
                return_codes: codes,
            },
            None,
        ))?;
        let mut router = shared.router();
        for (filter, opts) in accepted {
            router.subscribe(&client.id, &filter, opts);
        }
        Ok(())
    }

    /// UNSUBSCRIBE: answered with an UNSUBACK saying, per filter, whether it was
    /// subscribed.
    pub(super) fn unsubscribe(&mut self, unsub: Unsubscribe) -> Result<(), End> {
        let reasons = {
            let mut router = self.shared.router();
            unsub
                .filters
                .iter()
                .map(|f| {
                    if router.unsubscribe(&self.client.id, f) {
                        UnsubAckReason::Success
                    } else {
                        UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect()
        };
        self.send(Packet::UnsubAck(
            UnsubAck {
                pkid: unsub.pkid,
                reasons,
            },
            None,
        ))
    }
}

/// The options an accepted filter is subscribed with. A bridge's subscriptions are
/// no-local and retain-as-published, as Mosquitto treats a bridge.
fn sub_options(f: &Filter, client: &Client, v5: bool, id: Option<u32>) -> SubOptions {
    SubOptions {
        qos: codec::qos_num(f.qos).min(2),
        no_local: (v5 && f.nolocal) || client.bridge,
        // MQTT 3.1.1: live messages are forwarded with retain 0.
        retain_as_published: (v5 && f.preserve_retain) || client.bridge,
        retain_handling: match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => 0,
            RetainForwardRule::OnNewSubscribe => 1,
            RetainForwardRule::Never => 2,
        },
        id,
    }
}

/// The SUBACK code of a filter granted at `qos`.
fn granted(qos: u8, v5: bool) -> SubscribeReasonCode {
    if v5 {
        match qos {
            0 => SubscribeReasonCode::QoS0,
            1 => SubscribeReasonCode::QoS1,
            _ => SubscribeReasonCode::QoS2,
        }
    } else {
        SubscribeReasonCode::Success(codec::qos_of(qos))
    }
}

/// Counts a SUBSCRIBE the ACL refused; the first refusal of a connection is logged
/// with the reason.
fn subscribe_denied(shared: &Shared, client: &Client, filter: &str) {
    shared.metrics.acl_denials.inc();
    if !client.sub_denial_logged.swap(true, Ordering::Relaxed) {
        tracing::info!(client_id = %client.id, username = client.username.as_deref().unwrap_or(""), filter,
            reason = %denial_reason(client.username.as_deref(), Op::Read),
            "subscription refused by the ACL: no topic of the filter may be read (logged once per connection; later refusals are counted in edgemq_acl_denials_total)");
    } else {
        tracing::debug!(client_id = %client.id, filter, "subscription refused by the ACL");
    }
}
