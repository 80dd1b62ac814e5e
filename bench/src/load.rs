//! MQTT load: publishers and subscribers driven through rumqttc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Payload size of every benchmark message, in bytes.
pub const PAYLOAD: usize = 100;
/// At most this many latency samples are kept per phase (later ones are dropped).
const MAX_LATENCY_SAMPLES: usize = 4_000_000;

/// The instant all send times are measured from (publishers and subscribers share it).
fn epoch() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Payload: publisher id (u32 LE), sequence number (u64 LE), send time in nanoseconds
/// since the shared epoch (u64 LE), then filler up to [`PAYLOAD`] bytes.
pub fn encode(publisher: u32, seq: u64, sent: u64) -> Vec<u8> {
    let mut p = vec![0xa5u8; PAYLOAD];
    p[0..4].copy_from_slice(&publisher.to_le_bytes());
    p[4..12].copy_from_slice(&seq.to_le_bytes());
    p[12..20].copy_from_slice(&sent.to_le_bytes());
    p
}

pub fn decode(p: &[u8]) -> Option<(u32, u64, u64)> {
    if p.len() < 20 {
        return None;
    }
    let id = u32::from_le_bytes(p[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(p[4..12].try_into().ok()?);
    let sent = u64::from_le_bytes(p[12..20].try_into().ok()?);
    Some((id, seq, sent))
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Publish as fast as the client's inflight window (QoS 1) or socket (QoS 0) allows.
    ClosedLoop,
    /// Each publisher sends at this many messages per second.
    FixedRate(f64),
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    pub port: u16,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: QoS,
    /// Messages per publisher.
    pub per_publisher: u64,
    pub mode: Mode,
    pub window: u16,
    /// Hard bound on the whole phase (connect, publish, drain).
    pub deadline: Duration,
    /// Subscribers stop once nothing has arrived for this long after publishing ended.
    pub drain: Duration,
    pub record_latency: bool,
}

/// Called once every client is connected and subscribed, right before publishing.
pub type StartHook<'a> = &'a mut (dyn FnMut() + Send);

#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    /// Messages the publishers handed to the broker (written for QoS 0, acked for QoS 1).
    pub published: u64,
    /// Copies the subscribers should have received: published × subscribers.
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// From the start of publishing to the last message received.
    pub elapsed: Duration,
    /// Sorted one-way latencies in nanoseconds (empty unless recorded).
    pub latencies: Vec<u64>,
    pub hit_deadline: bool,
}

impl PhaseResult {
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.unique as f64 / s
        } else {
            0.0
        }
    }

    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.latencies.is_empty() {
            return None;
        }
        let idx = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        Some(self.latencies[idx.min(self.latencies.len() - 1)])
    }
}

fn options(id: String, port: u16, window: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_inflight(window.max(1));
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

/// Polls until CONNACK, bounded by `until`.
async fn wait_connack(el: &mut EventLoop, until: Instant) -> Result<()> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match timeout(left, el.poll()).await {
            Err(_) => bail!("timed out waiting for CONNACK"),
            Ok(Err(e)) => bail!("connect failed: {e}"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Received-message bookkeeping of one subscriber.
struct Tally {
    seen: Vec<Vec<u64>>,
    received: u64,
    unique: u64,
    latencies: Vec<u64>,
    record_latency: bool,
    latency_cap: usize,
}

impl Tally {
    fn new(publishers: usize, record_latency: bool, latency_cap: usize) -> Tally {
        Tally {
            seen: vec![Vec::new(); publishers],
            received: 0,
            unique: 0,
            latencies: Vec::new(),
            record_latency,
            latency_cap,
        }
    }

    fn add(&mut self, payload: &[u8], now: u64) {
        self.received += 1;
        let Some((id, seq, sent)) = decode(payload) else {
            return;
        };
        let Some(bits) = self.seen.get_mut(id as usize) else {
            return;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= bits.len() {
            // Sequence numbers are bounded by the per-publisher count, so this is bounded.
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) == 0 {
            bits[word] |= 1 << bit;
            self.unique += 1;
            if self.record_latency && self.latencies.len() < self.latency_cap {
                self.latencies.push(now.saturating_sub(sent));
            }
        }
    }
}

/// Runs one phase: connects subscribers (waiting for SUBACK) and publishers (waiting for
/// CONNACK), calls `on_start`, publishes, then waits until every subscriber has all
/// messages, went quiet for `drain`, or the deadline passed.
///
/// Each event loop runs in its own task and is never cancelled mid-poll while the phase
/// runs (a poll cancelled while flushing could corrupt the stream); it is aborted only
/// when the phase is over.
pub async fn run_phase(p: &Phase, tag: &str, on_start: StartHook<'_>) -> Result<PhaseResult> {
    let begin = Instant::now();
    let deadline = begin + p.deadline;
    let topic = format!("bench/{tag}");

    // Subscribers.
    let latency_cap = MAX_LATENCY_SAMPLES / p.subscribers.max(1);
    let mut subs = Vec::with_capacity(p.subscribers);
    let mut setups = JoinSet::new();
    for s in 0..p.subscribers {
        let topic = topic.clone();
        let qos = p.qos;
        let (port, window) = (p.port, p.window);
        let id = format!("{tag}-s{s}");
        setups.spawn(async move {
            let (client, mut el) = AsyncClient::new(options(id, port, window), 64);
            wait_connack(&mut el, deadline).await?;
            client.subscribe(topic, qos).await?;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match timeout(left, el.poll()).await {
                    Err(_) => bail!("timed out waiting for SUBACK"),
                    Ok(Err(e)) => bail!("subscriber connection failed: {e}"),
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return Ok((client, el)),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
    let mut ready = Vec::with_capacity(p.subscribers);
    while let Some(r) = setups.join_next().await {
        ready.push(
            r.context("subscriber setup panicked")?
                .with_context(|| format!("{}: subscriber setup", p.name))?,
        );
    }
    let unique_total = Arc::new(AtomicU64::new(0));
    let last_rx = Arc::new(AtomicU64::new(0));
    for (client, mut el) in ready {
        let tally = Arc::new(Mutex::new(Tally::new(
            p.publishers,
            p.record_latency,
            latency_cap,
        )));
        let unique = Arc::new(AtomicU64::new(0));
        let (t, u, ut, lr) = (
            tally.clone(),
            unique.clone(),
            unique_total.clone(),
            last_rx.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(msg))) => {
                        let now = now_nanos();
                        let mut g = t.lock().unwrap_or_else(|e| e.into_inner());
                        let before = g.unique;
                        g.add(&msg.payload, now);
                        if g.unique > before {
                            u.fetch_add(1, Ordering::Relaxed);
                            ut.fetch_add(1, Ordering::Relaxed);
                        }
                        lr.fetch_max(now, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        subs.push((client, task, tally, unique));
    }

    // Publishers: connect all first, then release them together.
    let mut pubs = Vec::new();
    for i in 0..p.publishers {
        let (client, mut el) =
            AsyncClient::new(options(format!("{tag}-p{i}"), p.port, p.window), 1024);
        if let Err(e) = wait_connack(&mut el, deadline).await {
            for (_, task, _, _) in &subs {
                task.abort();
            }
            return Err(e.context(format!("{}: publisher {i}", p.name)));
        }
        pubs.push((client, el));
    }
    on_start();
    let start = Instant::now();
    let start_nanos = now_nanos();
    let mut handles = Vec::new();
    for (i, (client, mut el)) in pubs.into_iter().enumerate() {
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        let qos = p.qos;
        let driver = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                        d.fetch_add(1, Ordering::Release);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        d.fetch_add(1, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let topic = topic.clone();
        let (n, mode, c) = (p.per_publisher, p.mode, client.clone());
        let sender = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut k = 0u64;
            while k < n && Instant::now() < deadline {
                if let Mode::FixedRate(rate) = mode {
                    let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                let payload = encode(i as u32, k, now_nanos());
                if c.publish(topic.as_str(), qos, false, payload).await.is_err() {
                    break;
                }
                k += 1;
            }
            k
        });
        handles.push((client, driver, sender, done));
    }
    // Wait for every publisher to have all its messages written (QoS 0) or acked (QoS 1).
    let mut published = 0u64;
    for (client, driver, sender, done) in handles {
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = match timeout(left, sender).await {
            Ok(r) => r.context("publisher task panicked")?,
            Err(_) => 0,
        };
        while done.load(Ordering::Acquire) < sent
            && Instant::now() < deadline
            && !driver.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        published += done.load(Ordering::Acquire).min(sent);
        let _ = client.try_disconnect();
        let _ = timeout(Duration::from_millis(300), async {
            while !driver.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        driver.abort();
    }
    let publish_done = Instant::now();

    // Wait for the subscribers: complete, quiet for `drain`, or the deadline.
    let want = published * p.subscribers as u64;
    let mut seen = unique_total.load(Ordering::Relaxed);
    let mut last_progress = publish_done;
    loop {
        let now = Instant::now();
        let u = unique_total.load(Ordering::Relaxed);
        if u != seen {
            seen = u;
            last_progress = now;
        }
        if u >= want || now >= deadline || now.duration_since(last_progress) >= p.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let mut res = PhaseResult {
        published,
        expected: want,
        ..Default::default()
    };
    for (client, task, tally, _unique) in subs {
        let _ = client.try_disconnect();
        let _ = timeout(Duration::from_millis(100), async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        task.abort();
        let g = tally.lock().unwrap_or_else(|e| e.into_inner());
        res.received += g.received;
        res.unique += g.unique;
        res.lost += published.saturating_sub(g.unique);
        if res.latencies.len() < MAX_LATENCY_SAMPLES {
            res.latencies.extend_from_slice(&g.latencies);
        }
    }
    res.duplicated = res.received - res.unique;
    let last = last_rx.load(Ordering::Relaxed);
    res.elapsed = Duration::from_nanos(last.saturating_sub(start_nanos));
    if res.elapsed.is_zero() {
        res.elapsed = publish_done.duration_since(start);
    }
    res.hit_deadline = Instant::now() >= deadline;
    res.latencies.sort_unstable();
    Ok(res)
}

/// Opens `n` idle MQTT connections with raw sockets (CONNECT, wait for CONNACK) and
/// returns them; dropping the vector closes them.
pub async fn open_idle(port: u16, n: usize, tag: &str, limit: Duration) -> Result<Vec<TcpStream>> {
    let deadline = Instant::now() + limit;
    let mut conns = Vec::with_capacity(n);
    let mut batch = JoinSet::new();
    let mut i = 0;
    while i < n {
        let end = (i + 64).min(n);
        for k in i..end {
            let id = format!("{tag}-i{k}");
            batch.spawn(async move {
                let left = deadline.saturating_duration_since(Instant::now());
                timeout(left, async {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
                    s.write_all(&crate::broker::connect_packet(&id, 600)).await?;
                    let mut ack = [0u8; 4];
                    s.read_exact(&mut ack).await?;
                    if ack[0] != 0x20 || ack[3] != 0 {
                        bail!("CONNACK refused: {ack:?}");
                    }
                    Ok(s)
                })
                .await
                .map_err(|_| anyhow::anyhow!("timed out opening idle connection"))?
            });
        }
        while let Some(r) = batch.join_next().await {
            conns.push(r??);
        }
        i = end;
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip() {
        let p = encode(7, 123_456, 987_654_321);
        assert_eq!(p.len(), PAYLOAD);
        assert_eq!(decode(&p), Some((7, 123_456, 987_654_321)));
        assert_eq!(decode(&p[..10]), None);
    }

    #[test]
    fn tally_counts_duplicates_and_unknown_publishers() {
        let mut t = Tally::new(2, true, 10);
        t.add(&encode(0, 0, 5), 10);
        t.add(&encode(0, 0, 5), 10);
        t.add(&encode(1, 200, 5), 12);
        t.add(&encode(9, 1, 5), 12);
        assert_eq!(t.received, 4);
        assert_eq!(t.unique, 2);
        assert_eq!(t.latencies, vec![5, 7]);
    }
}
