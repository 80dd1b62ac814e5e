//! MQTT 5 topic aliases a client sets on its PUBLISHes (§3.3.2.3.4): one table per
//! connection, at most [`TOPIC_ALIAS_MAXIMUM`] entries, announced in CONNACK.

use std::collections::HashMap;

use bytes::Bytes;
use rumqttd::protocol::DisconnectReasonCode;

/// Topic Alias Maximum announced to MQTT 5 clients.
pub const TOPIC_ALIAS_MAXIMUM: u16 = 10;

/// Why a PUBLISH's topic alias is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// Alias 0 or above the maximum [MQTT-3.3.2-8], [MQTT-3.3.2-9].
    #[error("topic alias 0 or above the topic alias maximum")]
    Invalid,
    /// An empty topic with an alias the connection never set, or an empty topic
    /// without an alias.
    #[error("empty topic without a known topic alias")]
    Unknown,
}

impl AliasError {
    /// The DISCONNECT reason code that says why.
    pub fn reason_code(self) -> DisconnectReasonCode {
        match self {
            AliasError::Invalid => DisconnectReasonCode::TopicAliasInvalid,
            AliasError::Unknown => DisconnectReasonCode::ProtocolError,
        }
    }
}

/// The aliases one connection has set.
#[derive(Debug, Default)]
pub struct TopicAliases {
    topics: HashMap<u16, Bytes>,
}

impl TopicAliases {
    /// The topic a PUBLISH is for: `topic` itself (remembered under `alias` when it
    /// has one), or the topic `alias` stands for when `topic` is empty.
    pub fn resolve(&mut self, topic: &Bytes, alias: Option<u16>) -> Result<Bytes, AliasError> {
        let Some(alias) = alias else {
            return if topic.is_empty() {
                Err(AliasError::Unknown)
            } else {
                Ok(topic.clone())
            };
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM {
            return Err(AliasError::Invalid);
        }
        if topic.is_empty() {
            return self.topics.get(&alias).cloned().ok_or(AliasError::Unknown);
        }
        self.topics.insert(alias, topic.clone());
        Ok(topic.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_set_with_a_topic_stands_for_it_until_set_again() {
        let mut a = TopicAliases::default();
        let empty = Bytes::new();
        assert_eq!(
            a.resolve(&Bytes::from("x/1"), Some(3)),
            Ok(Bytes::from("x/1"))
        );
        assert_eq!(a.resolve(&empty, Some(3)), Ok(Bytes::from("x/1")));
        a.resolve(&Bytes::from("x/2"), Some(3)).unwrap();
        assert_eq!(a.resolve(&empty, Some(3)), Ok(Bytes::from("x/2")));
    }

    #[test]
    fn alias_0_above_the_maximum_or_unknown_is_refused() {
        let mut a = TopicAliases::default();
        let t = Bytes::from("x");
        assert_eq!(a.resolve(&t, Some(0)), Err(AliasError::Invalid));
        assert_eq!(
            a.resolve(&t, Some(TOPIC_ALIAS_MAXIMUM + 1)),
            Err(AliasError::Invalid)
        );
        assert_eq!(a.resolve(&Bytes::new(), Some(1)), Err(AliasError::Unknown));
        assert_eq!(a.resolve(&Bytes::new(), None), Err(AliasError::Unknown));
    }
}
