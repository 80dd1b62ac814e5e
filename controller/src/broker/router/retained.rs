//! The retained store: bounded by `maxRetainedMessages` and `maxRetainedBytes`,
//! `$SYS` statistics kept apart from it, changes sent to persistence, and the
//! retained messages owed to a new subscription.

use std::sync::Arc;
use std::time::Instant;

use super::{message_bytes, Router};
use crate::auth::acl::{topic_matches, Op};
use crate::broker::types::{Delivery, Message, RetainedChange, SubOptions};

impl Router {
    /// Sends every later retained change to `tx` (persistence).
    pub fn set_persistence(
        &mut self,
        tx: Option<tokio::sync::mpsc::UnboundedSender<RetainedChange>>,
    ) {
        self.persist = tx;
    }

    /// Loads retained messages (from persistence) without emitting changes.
    pub fn restore_retained(&mut self, msgs: Vec<Arc<Message>>) {
        for m in msgs {
            self.retained_bytes += message_bytes(&m);
            if let Some(old) = self.retained.insert(m.topic.clone(), m) {
                self.retained_bytes -= message_bytes(&old);
            }
        }
        self.metrics.retained.set(self.retained.len() as i64);
    }

    pub(super) fn retain(&mut self, msg: &Arc<Message>) {
        // `$SYS` statistics are edgemq's own: kept apart from the retained store (not
        // persisted, not counted against maxRetainedMessages or in the metric).
        if msg.origin.is_none() && msg.topic.starts_with(b"$SYS/") {
            self.sys_retained.insert(msg.topic.clone(), msg.clone());
            return;
        }
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                self.retained_bytes -= message_bytes(&old);
                if let Some(p) = &self.persist {
                    let _ = p.send(RetainedChange::Clear(msg.topic.clone()));
                }
            }
        } else {
            let old = self.retained.get(&msg.topic).map(|m| message_bytes(m));
            let bytes = self.retained_bytes - old.unwrap_or(0) + message_bytes(msg);
            let refused = if old.is_none() && self.retained.len() >= self.limits.max_retained {
                self.metrics.refused.retained_messages.inc();
                Some(("maxRetainedMessages", self.limits.max_retained))
            } else if bytes > self.limits.max_retained_bytes {
                self.metrics.refused.retained_bytes.inc();
                Some(("maxRetainedBytes", self.limits.max_retained_bytes))
            } else {
                None
            };
            match refused {
                None => {
                    self.retained_bytes = bytes;
                    self.retained.insert(msg.topic.clone(), msg.clone());
                    if let Some(p) = &self.persist {
                        let _ = p.send(RetainedChange::Set(msg.clone()));
                    }
                }
                Some((setting, limit)) => {
                    self.retained_refused += 1;
                    let n = self.retained_refused;
                    if n.is_power_of_two() || n % 10_000 == 0 {
                        tracing::warn!(broker = %self.name, topic = %msg.topic_str(), limit, refused = n,
                            "retained message not kept: {setting} reached (delivered to the subscribers connected now; counted in edgemq_limit_refusals_total)");
                    }
                }
            }
        }
        self.metrics.retained.set(self.retained.len() as i64);
    }

    /// Every retained message (for persistence snapshots).
    pub fn retained_messages(&self) -> Vec<Arc<Message>> {
        self.retained.values().cloned().collect()
    }

    /// Queues for a new subscription of `client_id` to `filter` the retained messages
    /// (and `$SYS` statistics) it matches and may read, ahead of its queue and bounded
    /// by `maxRetainedMessages`.
    pub(super) fn queue_retained(&mut self, client_id: &Arc<str>, filter: &str, opts: SubOptions) {
        let matching: Vec<Arc<Message>> = self
            .retained
            .values()
            .chain(self.sys_retained.values())
            .filter(|m| topic_matches(filter, m.topic_str()) && !m.expired(Instant::now()))
            .cloned()
            .collect();
        for m in matching {
            let allowed = {
                let s = &self.sessions[client_id];
                self.acl
                    .check(s.username.as_deref(), client_id, m.topic_str(), Op::Read)
            };
            if !allowed {
                self.read_denied(client_id, m.topic_str());
                continue;
            }
            let qos = m.qos.min(opts.qos);
            let max_backlog = self.limits.max_retained.max(1);
            let Some(s) = self.sessions.get_mut(client_id) else {
                break;
            };
            if s.retained_backlog.len() >= max_backlog {
                // Only a client re-subscribing faster than it reads gets here.
                s.dropped += 1;
                self.metrics.dropped_queue_full.inc();
                continue;
            }
            s.retained_backlog.push_back(Delivery {
                msg: m,
                qos,
                retain: true,
                sub_ids: opts.id.into_iter().collect(),
            });
            if let Some(c) = &s.conn {
                c.wake.notify_one();
            }
        }
    }
}
