//! MQTT load: publishers and subscribers driven through rumqttc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::mqtt;

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
    /// Where the publishers connect.
    pub port: u16,
    /// Where the subscribers connect (the same as `port` except through a bridge).
    pub sub_port: u16,
    /// Prefixed to the publishers' topic for the subscription (a bridge's remote
    /// prefix; empty otherwise).
    pub sub_prefix: String,
    pub publishers: usize,
    pub subscribers: usize,
    /// 0 or 1.
    pub qos: u8,
    /// Messages per publisher.
    pub per_publisher: u64,
    pub mode: Mode,
    pub window: u16,
    /// Hard bound on the whole phase (connect, publish, drain).
    pub deadline: Duration,
    /// Subscribers stop once nothing has arrived for this long after publishing ended.
    pub drain: Duration,
    pub record_latency: bool,
    /// The pattern of real devices: every PUBLISH and every PUBACK in a write call of
    /// its own; the publishers' QoS 1 window is `window` (1: each publish waits for
    /// the PUBACK of the one before).
    pub one_per_packet: bool,
    /// Subscribers connect with clean session 0 (a persistent session the broker
    /// keeps, and with persistence on, saves).
    pub persistent_subscribers: bool,
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

    /// Records one received message; true when it was not seen before.
    fn add(&mut self, payload: &[u8], now: u64) -> bool {
        self.received += 1;
        let Some((id, seq, sent)) = decode(payload) else {
            return false;
        };
        let Some(bits) = self.seen.get_mut(id as usize) else {
            return false;
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
            true
        } else {
            false
        }
    }
}

/// Runs one phase: connects subscribers (waiting for SUBACK) and publishers (waiting for
/// CONNACK), calls `on_start`, publishes, then waits until every subscriber has all
/// messages, went quiet for `drain`, or the deadline passed.
pub async fn run_phase(p: &Phase, tag: &str, on_start: StartHook<'_>) -> Result<PhaseResult> {
    let begin = Instant::now();
    let deadline = begin + p.deadline;
    let topic = format!("bench/{tag}");
    let qos = p.qos;
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers: connect and subscribe concurrently, then wait for every SUBACK.
    let latency_cap = MAX_LATENCY_SAMPLES / p.subscribers.max(1);
    let unique_total = Arc::new(AtomicU64::new(0));
    let last_rx = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<()>>(p.subscribers.max(1));
    let mut subs = JoinSet::new();
    for s in 0..p.subscribers {
        let id = format!("{tag}-s{s}");
        let topic = format!("{}{topic}", p.sub_prefix);
        let port = p.sub_port;
        let ready = ready_tx.clone();
        let mut stop = stop_rx.clone();
        let (ut, lr) = (unique_total.clone(), last_rx.clone());
        let mut tally = Tally::new(p.publishers, p.record_latency, latency_cap);
        let (one_per_packet, clean) = (p.one_per_packet, !p.persistent_subscribers);
        subs.spawn(async move {
            let setup = async {
                let (mut sock, mut rd) = mqtt::connect_session(port, &id, deadline, clean).await?;
                sock.write_all(&mqtt::subscribe_packet(&topic, qos)).await?;
                loop {
                    if let Some(pk) = rd.next()? {
                        if pk.kind == mqtt::SUBACK {
                            if pk.body.get(2).is_some_and(|&rc| rc >= 0x80) {
                                bail!("subscription refused");
                            }
                            return Ok((sock, rd));
                        }
                        continue;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match timeout(left, rd.fill(&mut sock)).await {
                        Err(_) => bail!("timed out waiting for SUBACK"),
                        Ok(r) => {
                            if !r? {
                                bail!("connection closed before SUBACK");
                            }
                        }
                    }
                }
            };
            let (mut sock, mut rd) = match setup.await {
                Ok(v) => {
                    let _ = ready.send(Ok(())).await;
                    v
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return tally;
                }
            };
            drop(ready);
            let mut acks = Vec::new();
            loop {
                while let Ok(Some(pk)) = rd.next() {
                    if pk.kind != mqtt::PUBLISH {
                        continue;
                    }
                    if let Some((pkid, payload)) = mqtt::parse_publish(pk.flags, pk.body) {
                        let now = now_nanos();
                        if tally.add(payload, now) {
                            ut.fetch_add(1, Ordering::Relaxed);
                        }
                        lr.fetch_max(now, Ordering::Relaxed);
                        if (pk.flags >> 1) & 3 == 1 {
                            mqtt::put_puback(&mut acks, pkid);
                        }
                    }
                }
                // A PUBACK is 4 bytes: one write call each, or all of them in one.
                let chunk = if one_per_packet { 4 } else { acks.len().max(1) };
                let mut failed = false;
                for part in acks.chunks(chunk) {
                    if sock.write_all(part).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
                acks.clear();
                tokio::select! {
                    r = rd.fill(&mut sock) => match r {
                        Ok(true) => {}
                        _ => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            let _ = sock.write_all(&[0xe0, 0]).await;
            tally
        });
    }
    drop(ready_tx);
    for _ in 0..p.subscribers {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                subs.abort_all();
                return Err(e.context(format!("{}: subscriber setup", p.name)));
            }
            None => {
                subs.abort_all();
                bail!("{}: a subscriber task ended during setup", p.name);
            }
        }
    }

    // Publishers: connect all first, then release them together.
    let mut conns = Vec::with_capacity(p.publishers);
    for i in 0..p.publishers {
        match mqtt::connect(p.port, &format!("{tag}-p{i}"), deadline).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                subs.abort_all();
                return Err(e.context(format!("{}: publisher {i}", p.name)));
            }
        }
    }
    on_start();
    let start = Instant::now();
    let start_nanos = now_nanos();
    let mut pubs = JoinSet::new();
    for (i, (sock, rd)) in conns.into_iter().enumerate() {
        let topic = topic.clone();
        let (n, mode) = (p.per_publisher, p.mode);
        let window = p.window.max(1);
        let batch = if p.one_per_packet { 1 } else { BATCH };
        pubs.spawn(publisher(
            i as u32, sock, rd, topic, qos, n, mode, window, batch, deadline,
        ));
    }
    let mut published = 0u64;
    let mut pub_error = None;
    while let Some(r) = pubs.join_next().await {
        match r.context("publisher task panicked")? {
            Ok(n) => published += n,
            Err(e) => pub_error = Some(e),
        }
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
    let _ = stop_tx.send(true);

    let mut res = PhaseResult {
        published,
        expected: want,
        ..Default::default()
    };
    while let Some(r) = subs.join_next().await {
        let t = r.context("subscriber task panicked")?;
        res.received += t.received;
        res.unique += t.unique;
        res.lost += published.saturating_sub(t.unique);
        if res.latencies.len() < MAX_LATENCY_SAMPLES {
            res.latencies.extend_from_slice(&t.latencies);
        }
    }
    if let Some(e) = pub_error {
        return Err(e.context(format!("{}: publisher failed", p.name)));
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

/// Largest number of messages written with one write call.
const BATCH: u64 = 64;

/// One publisher. Returns how many messages reached the broker: written (QoS 0) or
/// acknowledged (QoS 1). At QoS 1 at most `window` messages are unacknowledged; at
/// most `batch` messages go in one write call.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    id: u32,
    sock: TcpStream,
    mut rd: mqtt::Reader,
    topic: String,
    qos: u8,
    n: u64,
    mode: Mode,
    window: u16,
    batch: u64,
    deadline: Instant,
) -> Result<u64> {
    let (mut r, mut w) = sock.into_split();
    let window = window as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let ack_notify = Arc::new(Notify::new());
    let (sent_tx, mut sent_rx) = watch::channel(u64::MAX);
    // Acknowledgement reader (QoS 1 only; at QoS 0 nothing comes back).
    let reader = (qos > 0).then(|| {
        let (acked, notify) = (acked.clone(), ack_notify.clone());
        tokio::spawn(async move {
            loop {
                while let Ok(Some(pk)) = rd.next() {
                    if pk.kind == mqtt::PUBACK {
                        acked.fetch_add(1, Ordering::Release);
                        notify.notify_one();
                    }
                }
                if acked.load(Ordering::Acquire) >= *sent_rx.borrow() {
                    break;
                }
                tokio::select! {
                    f = rd.fill(&mut r) => match f {
                        Ok(true) => {}
                        _ => break,
                    },
                    c = sent_rx.changed() => {
                        if c.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    });

    let t0 = Instant::now();
    let mut buf = Vec::with_capacity(batch as usize * (PAYLOAD + 64));
    let mut k = 0u64;
    let mut pkid: u16 = 0;
    while k < n && Instant::now() < deadline {
        // How many may go now.
        let mut allowed = (n - k).min(batch);
        if let Mode::FixedRate(rate) = mode {
            let due = t0 + Duration::from_secs_f64(k as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let now_k = (t0.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
            allowed = allowed.min(now_k.saturating_sub(k).max(1));
        }
        if qos > 0 {
            loop {
                let out = k - acked.load(Ordering::Acquire);
                if out < window {
                    allowed = allowed.min(window - out);
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    allowed = 0;
                    break;
                }
                let _ = timeout(left.min(Duration::from_millis(50)), ack_notify.notified()).await;
            }
            if allowed == 0 {
                break;
            }
        }
        buf.clear();
        for j in 0..allowed {
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            let payload = encode(id, k + j, now_nanos());
            mqtt::put_publish(&mut buf, &topic, qos, pkid, &payload);
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
        k += allowed;
    }
    let _ = sent_tx.send(k);
    let done = match reader {
        None => k,
        Some(mut task) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if timeout(left, &mut task).await.is_err() {
                // Deadline: count what was acknowledged so far.
                task.abort();
            }
            acked.load(Ordering::Acquire).min(k)
        }
    };
    let _ = w.write_all(&[0xe0, 0]).await;
    let _ = w.shutdown().await;
    Ok(done)
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
                    s.write_all(&mqtt::connect_packet(&id, 600)).await?;
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

/// Client id of persistent session `i` of the restart benchmark.
fn session_id(tag: &str, i: usize) -> String {
    format!("{tag}-k{i}")
}

/// The topic session `i` of the restart benchmark subscribes to.
fn session_topic(tag: &str, i: usize) -> String {
    format!("bench/{tag}/{i}")
}

/// Messages session `i` of `n` gets when `messages` are published round-robin.
fn session_share(messages: u64, n: usize, i: usize) -> u64 {
    let n = n as u64;
    messages / n + u64::from((i as u64) < messages % n)
}

/// Opens `n` persistent sessions (clean session 0), session `i` subscribed at QoS 1 to
/// its own topic, and disconnects them again; 64 at a time.
pub async fn make_sessions(port: u16, n: usize, tag: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut batch = JoinSet::new();
    let mut i = 0;
    while i < n {
        let end = (i + 64).min(n);
        for k in i..end {
            let (id, topic) = (session_id(tag, k), session_topic(tag, k));
            batch.spawn(async move {
                let (mut sock, mut rd) = mqtt::connect_session(port, &id, deadline, false).await?;
                sock.write_all(&mqtt::subscribe_packet(&topic, 1)).await?;
                loop {
                    if let Some(pk) = rd.next()? {
                        if pk.kind == mqtt::SUBACK {
                            if pk.body.get(2).is_some_and(|&rc| rc >= 0x80) {
                                bail!("subscription refused");
                            }
                            break;
                        }
                        continue;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match timeout(left, rd.fill(&mut sock)).await {
                        Err(_) => bail!("timed out waiting for SUBACK"),
                        Ok(r) => {
                            if !r? {
                                bail!("connection closed before SUBACK");
                            }
                        }
                    }
                }
                sock.write_all(&[0xe0, 0]).await?;
                Ok(())
            });
        }
        while let Some(r) = batch.join_next().await {
            r.context("session task panicked")??;
        }
        i = end;
    }
    Ok(())
}

/// Publishes `messages` QoS 1 messages round-robin to the topics of the `n` sessions
/// through one connection, at most `window` unacknowledged; returns how many the
/// broker acknowledged.
pub async fn fill_sessions(
    port: u16,
    n: usize,
    messages: u64,
    window: u16,
    tag: &str,
    limit: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + limit;
    let (sock, mut rd) = mqtt::connect(port, &format!("{tag}-fill"), deadline).await?;
    let (mut r, mut w) = sock.into_split();
    let window = u64::from(window.max(1));
    let topics: Vec<String> = (0..n).map(|i| session_topic(tag, i)).collect();
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut pkid: u16 = 0;
    let mut buf = Vec::new();
    loop {
        // Count the PUBACKs read so far before filling the window again.
        while let Some(pk) = rd.next()? {
            if pk.kind == mqtt::PUBACK {
                acked += 1;
            }
        }
        if acked >= messages {
            break;
        }
        if Instant::now() >= deadline {
            bail!("filling the sessions: {acked} of {messages} acknowledged within {limit:?}");
        }
        buf.clear();
        while sent < messages && sent - acked < window {
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            let topic = &topics[(sent % n as u64) as usize];
            mqtt::put_publish(&mut buf, topic, 1, pkid, &encode(0, sent, now_nanos()));
            sent += 1;
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left.min(Duration::from_secs(1)), rd.fill(&mut r)).await {
            Ok(Ok(true)) | Err(_) => {}
            Ok(Ok(false)) => bail!("the broker closed the connection while filling the sessions"),
            Ok(Err(e)) => return Err(e),
        }
    }
    let _ = w.write_all(&[0xe0, 0]).await;
    Ok(acked)
}

/// What the sessions got back after a restart.
#[derive(Clone, Copy, Debug, Default)]
pub struct DrainResult {
    /// Messages the sessions should get (all that were acknowledged while filling).
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    /// From the first reconnect to the last session done.
    pub elapsed: Duration,
}

/// Reconnects the `n` sessions (clean session 0), `concurrency` at a time. Each
/// acknowledges what it gets and leaves once it has its share of `messages`, or after
/// `quiet` without a new message.
pub async fn drain_sessions(
    port: u16,
    n: usize,
    messages: u64,
    tag: &str,
    concurrency: usize,
    quiet: Duration,
    limit: Duration,
) -> Result<DrainResult> {
    let deadline = Instant::now() + limit;
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (id, gate) = (session_id(tag, i), gate.clone());
        let want = session_share(messages, n, i);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let (mut sock, mut rd) = mqtt::connect_session(port, &id, deadline, false).await?;
            let mut tally = Tally::new(1, false, 0);
            let mut acks = Vec::new();
            while tally.unique < want {
                while let Some(pk) = rd.next()? {
                    if pk.kind != mqtt::PUBLISH {
                        continue;
                    }
                    if let Some((pkid, payload)) = mqtt::parse_publish(pk.flags, pk.body) {
                        // Publisher 0's sequence numbers are global: fold them to
                        // this session's own.
                        let folded =
                            decode(payload).map(|(_, seq, t)| encode(0, seq / n as u64, t));
                        tally.add(folded.as_deref().unwrap_or(payload), 0);
                        if (pk.flags >> 1) & 3 == 1 {
                            mqtt::put_puback(&mut acks, pkid);
                        }
                    }
                }
                if !acks.is_empty() {
                    sock.write_all(&acks).await?;
                    acks.clear();
                }
                if tally.unique >= want {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match timeout(left.min(quiet), rd.fill(&mut sock)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) | Err(_) => break,
                    Ok(Err(e)) => return Err(e),
                }
            }
            let _ = sock.write_all(&[0xe0, 0]).await;
            anyhow::Ok((tally.received, tally.unique))
        });
    }
    let mut res = DrainResult {
        expected: messages,
        ..Default::default()
    };
    while let Some(r) = tasks.join_next().await {
        let (received, unique) = r.context("session task panicked")??;
        res.received += received;
        res.unique += unique;
    }
    res.elapsed = start.elapsed();
    Ok(res)
}

/// Waits until a bridge forwards: subscribes on the remote broker (port `remote`) to
/// `{prefix}bench/{tag}`, then publishes one QoS 0 message to `bench/{tag}` on the local
/// broker every 100 ms until one arrives. Returns how long that took.
pub async fn wait_bridged(
    local: u16,
    remote: u16,
    prefix: &str,
    tag: &str,
    limit: Duration,
) -> Result<Duration> {
    let deadline = Instant::now() + limit;
    let topic = format!("bench/{tag}");
    let (mut sub, mut srd) = mqtt::connect(remote, &format!("{tag}-s"), deadline)
        .await
        .context("connecting to the remote broker")?;
    sub.write_all(&mqtt::subscribe_packet(&format!("{prefix}{topic}"), 0))
        .await?;
    let (mut publ, _) = mqtt::connect(local, &format!("{tag}-p"), deadline)
        .await
        .context("connecting to the local broker")?;
    let started = Instant::now();
    let mut subscribed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = Vec::new();
    loop {
        while let Some(pk) = srd.next()? {
            match pk.kind {
                mqtt::SUBACK => subscribed = true,
                mqtt::PUBLISH => {
                    let _ = sub.write_all(&[0xe0, 0]).await;
                    let _ = publ.write_all(&[0xe0, 0]).await;
                    return Ok(started.elapsed());
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            bail!("no message crossed the bridge within {limit:?}");
        }
        tokio::select! {
            _ = tick.tick() => {
                if subscribed {
                    buf.clear();
                    mqtt::put_publish(&mut buf, &topic, 0, 0, &encode(0, 0, now_nanos()));
                    publ.write_all(&buf).await.context("publishing to the local broker")?;
                }
            }
            r = srd.fill(&mut sub) => {
                if !r? {
                    bail!("the remote broker closed the connection");
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
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
    fn session_shares_add_up_to_the_messages() {
        assert_eq!(session_share(100_000, 10_000, 0), 10);
        let total: u64 = (0..7).map(|i| session_share(23, 7, i)).sum();
        assert_eq!(total, 23);
        assert_eq!(session_share(23, 7, 1), 4);
        assert_eq!(session_share(23, 7, 2), 3);
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
