//! `$SYS` topics: Mosquitto's common broker statistics, published as retained QoS 0
//! messages every `limits.sysIntervalSeconds` (0: off), so MQTT Explorer's statistics
//! panel and Mosquitto exporters work. They go through the router like any message:
//! `#` and `+/…` never match them (a topic starting with `$`), and the ACL decides who
//! may read them. They are not written to the retained store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::types::Message;
use super::Shared;

/// Exponential moving averages per minute over 1, 5 and 15 minutes, as Mosquitto's
/// `load/…` topics report them.
#[derive(Default)]
struct Load {
    last: u64,
    avg: [f64; 3],
}

impl Load {
    fn update(&mut self, total: u64, elapsed: f64) -> [f64; 3] {
        let per_minute = total.saturating_sub(self.last) as f64 * 60.0 / elapsed.max(0.001);
        self.last = total;
        for (avg, minutes) in self.avg.iter_mut().zip([1.0f64, 5.0, 15.0]) {
            let k = (-elapsed / (minutes * 60.0)).exp();
            *avg = per_minute + k * (*avg - per_minute);
        }
        self.avg
    }
}

/// Resident memory of this process in bytes, from `/proc/self/statm` (0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Publishes the `$SYS` topics of one broker until aborted.
pub async fn run(shared: Arc<Shared>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Instant> = None;
    let mut loads: [Load; 4] = Default::default();
    let (mut max_connected, mut heap_max) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let interval = shared.limits.load().sys_interval_seconds;
        if interval == 0 {
            last = None;
            continue;
        }
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(interval.into())) {
            continue;
        }
        let elapsed = last.map_or(f64::from(interval), |l| now.duration_since(l).as_secs_f64());
        last = Some(now);
        let m = &shared.metrics;
        let (received, sent) = (m.messages_in.get(), m.messages_out.get());
        let (bytes_in, bytes_out) = (m.bytes_in.get(), m.bytes_out.get());
        let heap = resident_bytes();
        heap_max = heap_max.max(heap);
        let mut router = shared.router();
        let stats = router.stats();
        let connected = stats.connected as u64;
        max_connected = max_connected.max(connected);
        let mut topics: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("edgemq version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".into(),
                format!("{} seconds", started.elapsed().as_secs()),
            ),
            ("clients/connected".into(), connected.to_string()),
            ("clients/active".into(), connected.to_string()),
            ("clients/total".into(), stats.sessions.to_string()),
            (
                "clients/disconnected".into(),
                (stats.sessions as u64)
                    .saturating_sub(connected)
                    .to_string(),
            ),
            (
                "clients/inactive".into(),
                (stats.sessions as u64)
                    .saturating_sub(connected)
                    .to_string(),
            ),
            ("clients/maximum".into(), max_connected.to_string()),
            ("messages/received".into(), received.to_string()),
            ("messages/sent".into(), sent.to_string()),
            (
                "messages/stored".into(),
                (stats.retained + stats.queued).to_string(),
            ),
            ("publish/messages/received".into(), received.to_string()),
            ("publish/messages/sent".into(), sent.to_string()),
            ("bytes/received".into(), bytes_in.to_string()),
            ("bytes/sent".into(), bytes_out.to_string()),
            (
                "subscriptions/count".into(),
                stats.subscriptions.to_string(),
            ),
            ("retained messages/count".into(), stats.retained.to_string()),
            (
                "store/messages/count".into(),
                (stats.retained + stats.queued).to_string(),
            ),
            ("heap/current".into(), heap.to_string()),
            ("heap/maximum".into(), heap_max.to_string()),
        ];
        let names = [
            "messages/received",
            "messages/sent",
            "bytes/received",
            "bytes/sent",
        ];
        let totals = [received, sent, bytes_in, bytes_out];
        for ((load, name), total) in loads.iter_mut().zip(names).zip(totals) {
            let avg = load.update(total, elapsed);
            for (window, v) in ["1min", "5min", "15min"].iter().zip(avg) {
                topics.push((format!("load/{name}/{window}"), format!("{v:.2}")));
            }
        }
        for (topic, value) in topics {
            router.publish(Message {
                topic: Bytes::from(format!("$SYS/broker/{topic}")),
                payload: Bytes::from(value),
                qos: 0,
                retain: true,
                properties: None,
                origin: None,
                expires_at: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_averages_follow_a_steady_rate() {
        let mut l = Load::default();
        let mut avg = [0.0; 3];
        for i in 1..=600u64 {
            avg = l.update(i * 10 * 60, 10.0); // 600 per 10 s: 3600 a minute
        }
        assert!((avg[0] - 3600.0).abs() < 1.0, "{avg:?}");
        assert!((avg[2] - 3600.0).abs() < 10.0, "{avg:?}");
    }
}
