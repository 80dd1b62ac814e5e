//! PUBLISH from a client and the QoS 1 and 2 acknowledgements in both directions
//! (PUBACK, PUBREC, PUBREL, PUBCOMP), and the will a connection leaves behind.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttd::protocol::{
    Disconnect, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, Publish, PublishProperties,
};

use super::super::alias::AliasError;
use super::super::codec;
use super::super::router::{denial_reason, Router};
use super::super::types::Message;
use super::super::Shared;
use super::{Client, End, Handler};
use crate::auth::acl::{valid_topic_name, Op};

impl Handler<'_> {
    /// A PUBLISH: checked (topic alias, topic, payload size), routed if the ACL lets
    /// the client write its topic, and acknowledged at its QoS either way.
    pub(super) fn publish(
        &mut self,
        publish: Publish,
        properties: Option<PublishProperties>,
        qos: u8,
        pkid: u16,
    ) -> Result<(), End> {
        let (shared, client) = (self.shared, self.client);
        let v5 = self.v5();
        shared.metrics.messages_in.inc();
        let topic_bytes = if v5 {
            let alias = properties.as_ref().and_then(|p| p.topic_alias);
            match self.aliases.resolve(&publish.topic, alias) {
                Ok(t) => t,
                Err(e) => {
                    let reason_code = e.reason_code();
                    self.send(Packet::Disconnect(Disconnect { reason_code }, None))?;
                    return Err(End::Protocol(match e {
                        AliasError::Invalid => "invalid topic alias",
                        AliasError::Unknown => "empty topic, no known alias",
                    }));
                }
            }
        } else {
            publish.topic.clone()
        };
        let Ok(topic) = std::str::from_utf8(&topic_bytes) else {
            return Err(End::Protocol("topic is not UTF-8"));
        };
        if !valid_topic_name(topic) {
            return Err(End::Protocol("PUBLISH to an invalid topic"));
        }
        let limits = shared.limits.load();
        if publish.payload.len() > limits.max_payload_bytes as usize {
            return Err(End::Protocol("payload larger than maxPayloadBytes"));
        }
        let msg = Message {
            topic: topic_bytes.clone(),
            payload: publish.payload.clone(),
            qos,
            retain: publish.retain,
            expires_at: expiry_deadline(
                properties.as_ref().and_then(|p| p.message_expiry_interval),
            ),
            properties: properties.map(|p| Box::new(forwardable(p))),
            origin: Some(client.id.clone()),
        };
        // One lock for the ACL check, the QoS 2 duplicate check and the routing.
        let allowed = {
            let mut router = shared.router();
            let allowed =
                router
                    .acl()
                    .check(client.username.as_deref(), &client.id, topic, Op::Write);
            // A QoS 2 packet id is remembered even when denied, so its PUBREL is known.
            let fresh = qos < 2 || router.qos2_received(&client.id, pkid);
            if allowed && fresh {
                router.publish_as(topic, msg);
            }
            allowed
        };
        if !allowed {
            shared.metrics.acl_denials.inc();
            if !client.denial_logged.swap(true, Ordering::Relaxed) {
                tracing::info!(client_id = %client.id, username = client.username.as_deref().unwrap_or(""), topic,
                    reason = %denial_reason(client.username.as_deref(), Op::Write),
                    "publish refused by the ACL (logged once per connection; later refusals are counted in edgemq_acl_denials_total)");
            } else {
                tracing::debug!(client_id = %client.id, topic, "publish denied by the ACL");
            }
        }
        match qos {
            1 => {
                let reason = if allowed || !v5 {
                    PubAckReason::Success
                } else {
                    PubAckReason::NotAuthorized
                };
                self.send(Packet::PubAck(PubAck { pkid, reason }, None))
            }
            2 => {
                let reason = if allowed || !v5 {
                    PubRecReason::Success
                } else {
                    PubRecReason::NotAuthorized
                };
                self.send(Packet::PubRec(PubRec { pkid, reason }, None))
            }
            _ => Ok(()),
        }
    }

    /// PUBACK: a QoS 1 delivery to the client is done.
    pub(super) fn puback(&self, pkid: u16) {
        let mut router = self.shared.router();
        router.puback(&self.client.id, pkid);
    }

    /// PUBREC: the client received a QoS 2 delivery; answered with PUBREL
    /// (MQTT 5: reason 0x92 for a packet id not in flight).
    pub(super) fn pubrec(&mut self, pkid: u16) -> Result<(), End> {
        let known = {
            let mut router = self.shared.router();
            router.pubrec(&self.client.id, pkid)
        };
        let reason = if known || !self.v5() {
            PubRelReason::Success
        } else {
            PubRelReason::PacketIdentifierNotFound
        };
        self.send(Packet::PubRel(PubRel { pkid, reason }, None))
    }

    /// PUBCOMP: a QoS 2 delivery to the client is done.
    pub(super) fn pubcomp(&self, pkid: u16) {
        let mut router = self.shared.router();
        router.pubcomp(&self.client.id, pkid);
    }

    /// PUBREL: the client releases a QoS 2 publish; answered with PUBCOMP (MQTT 5:
    /// reason 0x92 for a packet id never received).
    pub(super) fn pubrel(&mut self, pkid: u16) -> Result<(), End> {
        let known = {
            let mut router = self.shared.router();
            router.qos2_released(&self.client.id, pkid)
        };
        let reason = if known || !self.v5() {
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        };
        self.send(Packet::PubComp(PubComp { pkid, reason }, None))
    }
}

fn expiry_deadline(seconds: Option<u32>) -> Option<Instant> {
    seconds.map(|s| Instant::now() + Duration::from_secs(s.into()))
}

/// MQTT 5 properties forwarded to subscribers (topic alias and subscription ids are
/// per connection and are not forwarded).
fn forwardable(mut p: PublishProperties) -> PublishProperties {
    p.topic_alias = None;
    p.subscription_identifiers.clear();
    p
}

/// Publishes the client's will, if it has one the ACL lets it write; an MQTT 5 Will
/// Delay Interval holds it (see `will_delay`).
pub(super) fn publish_will(router: &mut Router, shared: &Shared, client: &Client) {
    let Some((will, props)) = &client.will else {
        return;
    };
    let Ok(topic) = std::str::from_utf8(&will.topic) else {
        return;
    };
    if !valid_topic_name(topic) {
        return;
    }
    if !router
        .acl()
        .check(client.username.as_deref(), &client.id, topic, Op::Write)
    {
        shared.metrics.acl_denials.inc();
        return;
    }
    let properties = props.as_ref().map(|p| {
        Box::new(PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..PublishProperties::default()
        })
    });
    let msg = Message {
        topic: will.topic.clone(),
        payload: will.message.clone(),
        qos: codec::qos_num(will.qos),
        retain: will.retain,
        expires_at: None,
        properties,
        origin: Some(client.id.clone()),
    };
    let expiry = props.as_ref().and_then(|p| p.message_expiry_interval);
    let delay = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
    router.will(&client.id, msg, delay, expiry);
    tracing::debug!(client_id = %client.id, topic, "will published");
}
