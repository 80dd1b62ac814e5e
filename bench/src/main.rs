//! edgemq-bench: runs the same MQTT load against edgemq and Mosquitto in one run,
//! alternating between them, and reports both plus their ratios.

mod broker;
mod load;
mod mqtt;
mod report;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use broker::{Broker, Kind, Spec};
use load::{Mode, Phase};
use report::{
    BridgeSetup, BrokerReport, BurstResult, IdleResult, Metrics, Report, RestartResult,
    ScenarioReport,
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "edgemq-bench",
    about = "Load generator comparing edgemq with Mosquitto on loopback"
)]
pub struct Args {
    /// Path of the edgemq binary.
    #[arg(long, default_value = "target/release/edgemq")]
    edgemq: String,
    /// Mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: String,
    /// Run only one side ("edgemq" or "mosquitto"); no ratios are printed then.
    #[arg(long, value_parser = ["edgemq", "mosquitto"])]
    only: Option<String>,
    /// Run each broker under `taskset -c N` (and this tool on the other cores).
    #[arg(long)]
    pin_core: Option<usize>,
    /// Inflight window, the same on clients and both brokers.
    #[arg(long, default_value_t = 20)]
    window: u16,
    /// Broker-side queue limit per client (max_queued_messages / maxQueuedMessages).
    #[arg(long, default_value_t = 100_000)]
    max_queued: u32,
    /// Scenarios to run, as PUBLISHERS:SUBSCRIBERS, comma separated.
    #[arg(long, default_value = "1:1,8:1,1:100", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// QoS levels to run each scenario at, comma separated.
    #[arg(long, default_value = "0,1", value_delimiter = ',')]
    qos: Vec<u8>,
    /// Closed-loop: messages delivered per scenario (published × subscribers).
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Fixed-rate: deliveries per second (published × subscribers) for latency.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Fixed-rate: seconds of sending.
    #[arg(long, default_value_t = 5)]
    rate_secs: u64,
    /// Repeat the scenario suite; medians are reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Idle connections opened to measure RSS per connection (0 skips).
    #[arg(long, default_value_t = 1000)]
    idle_conns: usize,
    /// Messages in the memory burst (QoS 0, fan-in to one subscriber; 0 skips).
    #[arg(long, default_value_t = 3_000_000)]
    burst_messages: u64,
    /// Publishers in the memory burst.
    #[arg(long, default_value_t = 1)]
    burst_publishers: usize,
    /// Seconds to wait after the suite before reading each broker's RSS once more
    /// ("RSS after the suite": what a broker keeps once the load is gone; edgemq
    /// looks at what malloc holds free every 10 s). 0 skips.
    #[arg(long, default_value_t = 12)]
    settle_secs: u64,
    /// Upper bound on any one phase, in seconds.
    #[arg(long, default_value_t = 60)]
    phase_timeout: u64,
    /// Subscribers give up after this long without a new message once publishing ended.
    #[arg(long, default_value_t = 2000)]
    drain_ms: u64,
    /// Seconds to wait for a broker to accept connections.
    #[arg(long, default_value_t = 15)]
    startup_timeout: u64,
    /// Set `set_tcp_nodelay true` in the generated mosquitto.conf.
    #[arg(long)]
    mosquitto_nodelay: bool,
    /// The pattern real devices produce (`mosquitto_pub -l -q 1` into
    /// `mosquitto_sub -q 1`): one message per write call and one PUBACK per write call
    /// from the subscribers; at QoS 1 each publisher has at most N messages
    /// unacknowledged (default 1: each publish waits for the PUBACK of the one
    /// before). The brokers' window stays `--window`.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    one_per_packet: Option<u16>,
    /// Persistence on in both brokers (Mosquitto `persistence true`, edgemq
    /// `persistence: {enabled: true}`), and subscribers with persistent sessions
    /// (clean session 0), so their sessions are what the brokers keep.
    #[arg(long)]
    persistence: bool,
    /// Run the restart benchmark instead of the broker suite (persistence on): open
    /// `--restart-sessions` persistent sessions, queue `--restart-messages` QoS 1
    /// messages for them while they are offline, stop the broker with SIGTERM, start
    /// it again on the same state, and reconnect every session.
    #[arg(long)]
    restart: bool,
    /// Restart: persistent sessions, each with its own QoS 1 subscription.
    #[arg(long, default_value_t = 10_000)]
    restart_sessions: usize,
    /// Restart: QoS 1 messages queued for the sessions (round-robin) before the stop.
    #[arg(long, default_value_t = 100_000)]
    restart_messages: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Noise check: the "edgemq" side runs a second Mosquitto instead.
    #[arg(long, hide = true)]
    mosquitto_vs_mosquitto: bool,
    /// Run the bridge benchmark instead of the broker suite: QoS 1 publishers on a
    /// local broker (edgemq with a Bridge, or Mosquitto with a `connection` bridge),
    /// one subscriber on a remote Mosquitto (the sink) behind the bridge.
    #[arg(long)]
    bridge: bool,
    /// Bridge: publisher counts to run, comma separated.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    bridge_publishers: Vec<usize>,
    /// Bridge: messages per closed-loop run (all publishers together).
    #[arg(long, default_value_t = 100_000)]
    bridge_messages: u64,
    /// Bridge: messages per second (all publishers together) for the latency run.
    #[arg(long, default_value_t = 2_000)]
    bridge_rate: u64,
    /// Bridge: Mosquitto's bridge window (`max_inflight_messages` of the local
    /// Mosquitto). edgemq's bridge window is fixed at 256.
    #[arg(long, default_value_t = 256)]
    bridge_inflight: u16,
    /// Bridge: the sink's `max_inflight_messages` towards the subscriber.
    #[arg(long, default_value_t = 1000)]
    sink_inflight: u16,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: u8,
}

fn parse_scenarios(args: &Args) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for s in &args.scenarios {
        let (p, c) = s
            .split_once(':')
            .with_context(|| format!("scenario {s:?} is not PUBLISHERS:SUBSCRIBERS"))?;
        let publishers: usize = p.trim().parse().context("publishers")?;
        let subscribers: usize = c.trim().parse().context("subscribers")?;
        if publishers == 0 || subscribers == 0 || publishers > 10_000 || subscribers > 10_000 {
            bail!("scenario {s:?}: counts must be 1..=10000");
        }
        for &q in &args.qos {
            if q > 1 {
                bail!("QoS {q}: only QoS 0 and 1 are measured");
            }
            let qos = q;
            out.push(Scenario {
                name: format!("{publishers}:{subscribers} QoS{q}"),
                publishers,
                subscribers,
                qos,
            });
        }
    }
    Ok(out)
}

fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[{:>7.1}s] {}",
        started().elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

fn started() -> Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T.get_or_init(Instant::now)
}

/// Pins this process to every core except `core`, so the load does not share the
/// broker's core. Threads created afterwards inherit the mask.
fn pin_self_away_from(core: usize) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let others: Vec<String> = (0..n)
        .filter(|&c| c != core)
        .map(|c| c.to_string())
        .collect();
    if others.is_empty() {
        log("only one core: the load generator shares the broker's core");
        return;
    }
    let ok = std::process::Command::new("taskset")
        .args(["-p", "-c", &others.join(",")])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        log("could not pin the load generator (taskset failed); continuing unpinned");
    }
}

/// Raises the open-file limit for this process (and so for the brokers it starts) when
/// the idle-connection test needs more descriptors than the soft limit allows.
fn raise_nofile(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return;
    };
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let soft: u64 = nums.first().and_then(|v| v.parse().ok()).unwrap_or(0);
    let hard = nums.get(1).copied().unwrap_or("unlimited");
    if soft >= needed {
        return;
    }
    let ok = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        log(format!(
            "open-file limit is {soft} and could not be raised; run `ulimit -n {needed}` first"
        ));
    }
}

struct Side {
    spec: Spec,
    broker: Option<Broker>,
    report: BrokerReport,
}

impl Side {
    fn fail(&mut self, what: &str, e: anyhow::Error) {
        let mut msg = format!("{what}: {e:#}");
        if let Some(b) = self.broker.as_mut() {
            if !b.alive() {
                msg.push_str(&format!(
                    "\n{} exited; its log:\n{}",
                    self.spec.label,
                    b.log_tail()
                ));
                self.broker = None;
            }
        }
        log(format!("{}: {msg}", self.spec.label));
        self.report.errors.push(msg);
    }
}

async fn measure(b: &Broker, phase: &Phase, tag: &str) -> Result<Metrics> {
    let peak_reset = b.reset_peak();
    let pid = b.pid();
    let mut cpu0 = None;
    let mut hook = || cpu0 = broker::read_cpu(pid).ok();
    let r = load::run_phase(phase, tag, &mut hook).await?;
    let cpu1 = b.cpu()?;
    let mem = b.mem()?;
    let cpu0 = cpu0.context("reading broker CPU time at phase start")?;
    let cpu_ns = cpu1.0.saturating_sub(cpu0.0);
    let user_ns = cpu1.1.saturating_sub(cpu0.1);
    Ok(Metrics::from_phase(&r, cpu_ns, user_ns, mem, peak_reset))
}

async fn run_idle(b: &Broker, conns: usize, tag: &str) -> Result<IdleResult> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = b.mem()?;
    let mut res = IdleResult {
        idle_rss_kb: before.rss_kb,
        conns,
        ..Default::default()
    };
    if conns == 0 {
        return Ok(res);
    }
    let open = load::open_idle(b.port, conns, tag, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let with = b.mem()?;
    drop(open);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = b.mem()?;
    res.with_conns_rss_kb = with.rss_kb;
    res.after_close_rss_kb = after.rss_kb;
    res.per_conn_bytes = (with.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / conns as f64;
    Ok(res)
}

async fn run_burst(b: &Broker, args: &Args, tag: &str) -> Result<BurstResult> {
    let pubs = args.burst_publishers.max(1);
    let phase = Phase {
        name: "burst".into(),
        port: b.port,
        sub_port: b.port,
        sub_prefix: String::new(),
        publishers: pubs,
        subscribers: 1,
        qos: 0,
        per_publisher: args.burst_messages.div_ceil(pubs as u64),
        mode: Mode::ClosedLoop,
        window: args.window,
        deadline: Duration::from_secs(args.phase_timeout.max(1) * 5),
        drain: Duration::from_millis(args.drain_ms),
        record_latency: false,
        one_per_packet: false,
        persistent_subscribers: false,
    };
    let m = measure(b, &phase, tag).await?;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let settled = b.mem()?;
    Ok(BurstResult {
        metrics: m,
        settled_rss_kb: settled.rss_kb,
    })
}

fn phases(args: &Args, sc: &Scenario, port: u16) -> (Phase, Phase) {
    let fan = (sc.publishers * sc.subscribers) as u64;
    let deadline = Duration::from_secs(args.phase_timeout.max(1));
    let drain = Duration::from_millis(args.drain_ms);
    let closed = Phase {
        name: format!("{} closed-loop", sc.name),
        port,
        sub_port: port,
        sub_prefix: String::new(),
        publishers: sc.publishers,
        subscribers: sc.subscribers,
        qos: sc.qos,
        per_publisher: (args.messages / fan).max(1),
        mode: Mode::ClosedLoop,
        window: args.one_per_packet.unwrap_or(args.window),
        deadline,
        drain,
        record_latency: false,
        one_per_packet: args.one_per_packet.is_some(),
        persistent_subscribers: args.persistence,
    };
    let per_pub_rate = (args.rate as f64 / fan as f64).max(0.1);
    let fixed = Phase {
        name: format!("{} fixed-rate", sc.name),
        per_publisher: ((per_pub_rate * args.rate_secs as f64).round() as u64).max(1),
        mode: Mode::FixedRate(per_pub_rate),
        deadline: deadline.max(Duration::from_secs(args.rate_secs + 30)),
        record_latency: true,
        ..closed.clone()
    };
    (closed, fixed)
}

fn tag_of(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

async fn run(args: Args, sides: &mut [Side]) -> Result<()> {
    let scenarios = parse_scenarios(&args)?;
    for side in sides.iter_mut() {
        side.report.scenarios = scenarios
            .iter()
            .map(|s| ScenarioReport::new(&s.name))
            .collect();
    }

    // Memory at rest, on freshly started brokers.
    for side in sides.iter_mut() {
        let Some(b) = side.broker.as_ref() else {
            continue;
        };
        log(format!(
            "{}: idle RSS, {} idle connections",
            side.spec.label, args.idle_conns
        ));
        let tag = format!("idle-{}", tag_of(&side.spec.label));
        match run_idle(b, args.idle_conns, &tag).await {
            Ok(r) => side.report.idle = Some(r),
            Err(e) => side.fail("idle connections", e),
        }
    }

    for rep in 0..args.repeat.max(1) {
        for (si, sc) in scenarios.iter().enumerate() {
            // Alternate which broker goes first, so drift and warm-up hit both alike.
            let mut order: Vec<usize> = (0..sides.len()).collect();
            if (si + rep) % 2 == 1 {
                order.reverse();
            }
            for &i in &order {
                let side = &mut sides[i];
                let Some(b) = side.broker.as_ref() else {
                    continue;
                };
                let (closed, fixed) = phases(&args, sc, b.port);
                let base = format!("r{rep}-{}-{}", tag_of(&sc.name), tag_of(&side.spec.label));
                log(format!("{}: {} closed-loop", side.spec.label, sc.name));
                let c = measure(b, &closed, &format!("{base}-c")).await;
                let b = side.broker.as_ref().expect("checked above");
                let f = match &c {
                    Ok(_) => {
                        log(format!("{}: {} fixed-rate", side.spec.label, sc.name));
                        Some(measure(b, &fixed, &format!("{base}-f")).await)
                    }
                    Err(_) => None,
                };
                match c {
                    Ok(m) => side.report.scenarios[si].closed.push(m),
                    Err(e) => side.fail(&closed.name, e),
                }
                match f {
                    Some(Ok(m)) => side.report.scenarios[si].fixed.push(m),
                    Some(Err(e)) => side.fail(&fixed.name, e),
                    None => {}
                }
            }
        }
    }

    if args.burst_messages > 0 {
        for side in sides.iter_mut() {
            let Some(b) = side.broker.as_ref() else {
                continue;
            };
            log(format!(
                "{}: burst of {} messages",
                side.spec.label, args.burst_messages
            ));
            let tag = format!("burst-{}", tag_of(&side.spec.label));
            match run_burst(b, &args, &tag).await {
                Ok(r) => side.report.burst = Some(r),
                Err(e) => side.fail("burst", e),
            }
        }
    }
    if args.settle_secs > 0 {
        log(format!(
            "waiting {} s, then the RSS after the suite",
            args.settle_secs
        ));
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        for side in sides.iter_mut() {
            let Some(b) = side.broker.as_ref() else {
                continue;
            };
            match b.mem() {
                Ok(m) => side.report.after_suite_rss_kb = Some(m.rss_kb),
                Err(e) => side.fail("RSS after the suite", e),
            }
        }
    }
    Ok(())
}

/// The bridge benchmark: for each publisher count, each local broker in turn (the
/// order alternating) gets the closed-loop and the fixed-rate phase; its publishers
/// publish at QoS 1 on the local broker and one QoS 1 subscriber counts what arrives
/// on the sink under the bridge's remote prefix.
async fn run_bridge(args: Args, sides: &mut [Side], sink: &Broker) -> Result<()> {
    let counts: Vec<usize> = args.bridge_publishers.clone();
    for side in sides.iter_mut() {
        side.report.scenarios = counts
            .iter()
            .map(|n| ScenarioReport::new(&bridge_scenario_name(*n)))
            .collect();
    }

    // Each bridge must forward before anything is measured.
    for side in sides.iter_mut() {
        let Some(b) = side.broker.as_ref() else {
            continue;
        };
        let tag = format!("ready-{}", tag_of(&side.spec.label));
        let limit = Duration::from_secs(args.startup_timeout.max(1));
        match load::wait_bridged(b.port, sink.port, broker::BRIDGE_REMOTE_PREFIX, &tag, limit).await
        {
            Ok(t) => log(format!(
                "{}: bridge forwards to the sink (first message after {} ms)",
                side.spec.label,
                t.as_millis()
            )),
            Err(e) => side.fail("bridge startup", e),
        }
    }

    let deadline = Duration::from_secs(args.phase_timeout.max(1));
    let drain = Duration::from_millis(args.drain_ms);
    for rep in 0..args.repeat.max(1) {
        for (si, &n) in counts.iter().enumerate() {
            let mut order: Vec<usize> = (0..sides.len()).collect();
            if (si + rep) % 2 == 1 {
                order.reverse();
            }
            for &i in &order {
                let side = &mut sides[i];
                let Some(b) = side.broker.as_ref() else {
                    continue;
                };
                let name = bridge_scenario_name(n);
                let closed = Phase {
                    name: format!("{name} closed-loop"),
                    port: b.port,
                    sub_port: sink.port,
                    sub_prefix: broker::BRIDGE_REMOTE_PREFIX.into(),
                    publishers: n,
                    subscribers: 1,
                    qos: 1,
                    per_publisher: (args.bridge_messages / n as u64).max(1),
                    mode: Mode::ClosedLoop,
                    window: args.one_per_packet.unwrap_or(args.window),
                    deadline,
                    drain,
                    record_latency: false,
                    one_per_packet: args.one_per_packet.is_some(),
                    persistent_subscribers: false,
                };
                let per_pub_rate = (args.bridge_rate as f64 / n as f64).max(0.1);
                let fixed = Phase {
                    name: format!("{name} fixed-rate"),
                    per_publisher: ((per_pub_rate * args.rate_secs as f64).round() as u64).max(1),
                    mode: Mode::FixedRate(per_pub_rate),
                    deadline: deadline.max(Duration::from_secs(args.rate_secs + 30)),
                    record_latency: true,
                    ..closed.clone()
                };
                let base = format!("r{rep}-{}-{}", tag_of(&name), tag_of(&side.spec.label));
                log(format!("{}: {name} closed-loop", side.spec.label));
                let c = measure_bridge(b, &closed, &format!("{base}-c")).await;
                let f = match &c {
                    Ok(_) => {
                        log(format!("{}: {name} fixed-rate", side.spec.label));
                        Some(measure_bridge(b, &fixed, &format!("{base}-f")).await)
                    }
                    Err(_) => None,
                };
                match c {
                    Ok(m) => side.report.scenarios[si].closed.push(m),
                    Err(e) => side.fail(&closed.name, e),
                }
                match f {
                    Some(Ok(m)) => side.report.scenarios[si].fixed.push(m),
                    Some(Err(e)) => side.fail(&fixed.name, e),
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// The restart benchmark, one broker after the other (only one is under load at a
/// time; the order does not alternate, there is one pass).
async fn run_restart(args: Args, sides: &mut [Side]) -> Result<()> {
    for side in sides.iter_mut() {
        let label = side.spec.label.clone();
        let Some(b) = side.broker.as_mut() else {
            continue;
        };
        log(format!(
            "{label}: restart with {} sessions and {} queued messages",
            args.restart_sessions, args.restart_messages
        ));
        match restart_once(&args, b, &tag_of(&format!("rs-{label}"))).await {
            Ok(r) => side.report.restart = Some(r),
            Err(e) => side.fail("restart", e),
        }
    }
    Ok(())
}

async fn restart_once(args: &Args, b: &mut Broker, tag: &str) -> Result<RestartResult> {
    let n = args.restart_sessions.max(1);
    let limit = Duration::from_secs(args.phase_timeout.max(1) * 5);
    load::make_sessions(b.port, n, tag, limit)
        .await
        .context("opening the sessions")?;
    log(format!("{}: {n} sessions made, queueing messages", b.label));
    let t = Instant::now();
    let queued = load::fill_sessions(b.port, n, args.restart_messages, args.window, tag, limit)
        .await
        .context("queueing messages for the sessions")?;
    let fill_s = t.elapsed().as_secs_f64();
    let rss_before_kb = b.mem()?.rss_kb;
    log(format!("{}: {queued} queued; SIGTERM", b.label));
    let stop = tokio::task::block_in_place(|| b.terminate(limit))?;
    let disk_bytes = b.disk_bytes();
    let start = tokio::task::block_in_place(|| b.restart())?;
    let start_cpu = b.cpu()?;
    let rss_after_start_kb = b.mem()?.rss_kb;
    log(format!(
        "{}: up again after {} ms; reconnecting the sessions",
        b.label,
        start.as_millis()
    ));
    let drain = load::drain_sessions(
        b.port,
        n,
        queued,
        tag,
        500,
        Duration::from_millis(args.drain_ms),
        limit,
    )
    .await
    .context("reconnecting the sessions")?;
    let end_cpu = b.cpu()?;
    Ok(RestartResult {
        sessions: n,
        queued,
        fill_s,
        rss_before_kb,
        stop_s: stop.as_secs_f64(),
        disk_bytes,
        start_s: start.as_secs_f64(),
        start_cpu_ms: start_cpu.0 as f64 / 1e6,
        rss_after_start_kb,
        drain,
        drain_cpu_ms: end_cpu.0.saturating_sub(start_cpu.0) as f64 / 1e6,
    })
}

/// [`measure`], plus the drops edgemq's bridge counted during the phase.
async fn measure_bridge(b: &Broker, phase: &Phase, tag: &str) -> Result<Metrics> {
    const DROPPED: &str = "edgemq_bridge_dropped_total";
    let before = b.metric_sum(DROPPED);
    let mut m = measure(b, phase, tag).await?;
    if let (Some(a), Some(z)) = (before, b.metric_sum(DROPPED)) {
        m.bridge_dropped = Some((z - a).max(0.0) as u64);
    }
    Ok(m)
}

fn bridge_scenario_name(publishers: usize) -> String {
    format!("{publishers} pub QoS1")
}

fn main() -> Result<()> {
    let args = Args::parse();
    started();
    // Counted before this process pins itself (which narrows what it sees).
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if let Some(core) = args.pin_core {
        pin_self_away_from(core);
    }
    if args.bridge && args.restart {
        bail!("--bridge and --restart are separate benchmarks: run them one at a time");
    }
    if args.bridge {
        if args.bridge_publishers.iter().any(|&n| n == 0 || n > 10_000) {
            bail!("--bridge-publishers: counts must be 1..=10000");
        }
    } else {
        raise_nofile(args.idle_conns as u64 + 4096);
    }

    // The bridge benchmark's sink: a Mosquitto on another core than the local brokers.
    let sink = if args.bridge {
        let spec = Spec {
            label: "sink".into(),
            kind: Kind::Mosquitto,
            program: args.mosquitto.clone(),
            window: args.sink_inflight,
            max_queued: broker::BRIDGE_QUEUE_MESSAGES as u32,
            pin_core: args
                .pin_core
                .map(|c| if cores > 1 { (c + 1) % cores } else { c }),
            mosquitto_nodelay: true,
            startup_timeout: Duration::from_secs(args.startup_timeout),
            bridge_to: None,
            persistence: false,
        };
        log(format!("starting the sink ({})", spec.program));
        let b = Broker::start(&spec)?;
        log(format!(
            "sink is up on 127.0.0.1:{} (pid {})",
            b.port,
            b.pid()
        ));
        Some((spec, b))
    } else {
        None
    };

    let common = |label: &str, kind: Kind, program: &str| match &sink {
        None => Spec {
            label: label.into(),
            kind,
            program: program.into(),
            window: args.window,
            max_queued: args.max_queued,
            pin_core: args.pin_core,
            mosquitto_nodelay: args.mosquitto_nodelay,
            startup_timeout: Duration::from_secs(args.startup_timeout),
            bridge_to: None,
            persistence: args.persistence || args.restart,
        },
        Some((_, s)) => Spec {
            label: label.into(),
            kind,
            program: program.into(),
            window: args.bridge_inflight,
            max_queued: broker::BRIDGE_QUEUE_MESSAGES as u32,
            pin_core: args.pin_core,
            mosquitto_nodelay: args.mosquitto_nodelay,
            startup_timeout: Duration::from_secs(args.startup_timeout),
            bridge_to: Some(s.port),
            persistence: args.persistence,
        },
    };
    let first = if args.mosquitto_vs_mosquitto {
        common("mosquitto-b", Kind::Mosquitto, &args.mosquitto)
    } else {
        // The broker runs in a temporary directory: a relative path must be made
        // absolute first.
        let path = std::path::absolute(&args.edgemq).unwrap_or_else(|_| args.edgemq.clone().into());
        common("edgemq", Kind::Edgemq, &path.to_string_lossy())
    };
    let mut specs = vec![first, common("mosquitto", Kind::Mosquitto, &args.mosquitto)];
    if let Some(only) = &args.only {
        specs.retain(|s| match s.kind {
            Kind::Edgemq => only == "edgemq",
            Kind::Mosquitto => only == "mosquitto",
        });
    }

    let mut sides = Vec::new();
    for spec in specs {
        log(format!("starting {} ({})", spec.label, spec.program));
        let broker = Broker::start(&spec)?;
        log(format!(
            "{} is up on 127.0.0.1:{} (pid {})",
            spec.label,
            broker.port,
            broker.pid()
        ));
        sides.push(Side {
            report: BrokerReport::new(&spec.label),
            spec,
            broker: Some(broker),
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        let work = async {
            match &sink {
                Some((_, s)) => run_bridge(args.clone(), &mut sides, s).await,
                None if args.restart => run_restart(args.clone(), &mut sides).await,
                None => run(args.clone(), &mut sides).await,
            }
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));

    let bridge = sink.as_ref().map(|(spec, _)| BridgeSetup {
        inflight: args.bridge_inflight,
        sink_inflight: spec.window,
        sink_core: spec.pin_core,
        queue_messages: broker::BRIDGE_QUEUE_MESSAGES,
    });
    let report = Report {
        window: args.window,
        payload: load::PAYLOAD,
        pin_core: args.pin_core,
        rate: if args.bridge {
            args.bridge_rate
        } else {
            args.rate
        },
        messages: if args.bridge {
            args.bridge_messages
        } else if args.restart {
            args.restart_messages
        } else {
            args.messages
        },
        idle_conns: args.idle_conns,
        burst_messages: args.burst_messages,
        one_per_packet: args.one_per_packet,
        persistence: args.persistence || args.restart,
        brokers: sides.iter().map(|s| s.report.clone()).collect(),
        bridge,
        restart: args.restart,
    };
    // Stop the brokers (by pid) before printing: the local ones, then the sink.
    drop(sides);
    drop(sink);
    outcome?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
