//! Results, their aggregation over repeats, and the table / JSON output.

use std::fmt::Write as _;

use crate::broker::MemSample;
use crate::load::{DrainResult, PhaseResult};

mod json;

/// Figures of one phase on one broker.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Unique deliveries per second, from the first publish to the last receipt.
    pub msgs_per_sec: f64,
    /// Broker utime+stime during the phase divided by unique deliveries.
    pub cpu_ns_per_msg: Option<f64>,
    /// The user-space part of it (utime): the broker's own code, without the kernel.
    pub user_ns_per_msg: Option<f64>,
    pub cpu_ms: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    /// VmHWM at the end of the phase (peak since the phase started when `peak_reset`).
    pub peak_rss_kb: u64,
    pub peak_reset: bool,
    /// VmRSS at the end of the phase.
    pub rss_kb: u64,
    pub published: u64,
    pub expected: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub elapsed_s: f64,
    pub hit_deadline: bool,
    /// Messages the broker's bridge reported dropping during the phase (edgemq's
    /// `edgemq_bridge_dropped_total`); `None` where not available.
    pub bridge_dropped: Option<u64>,
}

impl Metrics {
    pub fn from_phase(
        r: &PhaseResult,
        cpu_ns: u64,
        user_ns: u64,
        mem: MemSample,
        peak_reset: bool,
    ) -> Metrics {
        let us = |v: Option<u64>| v.map(|n| n as f64 / 1000.0);
        Metrics {
            msgs_per_sec: r.rate(),
            cpu_ns_per_msg: (r.unique > 0).then(|| cpu_ns as f64 / r.unique as f64),
            user_ns_per_msg: (r.unique > 0).then(|| user_ns as f64 / r.unique as f64),
            cpu_ms: cpu_ns as f64 / 1e6,
            p50_us: us(r.percentile(0.50)),
            p99_us: us(r.percentile(0.99)),
            max_us: us(r.latencies.last().copied()),
            peak_rss_kb: mem.hwm_kb,
            peak_reset,
            rss_kb: mem.rss_kb,
            published: r.published,
            expected: r.expected,
            unique: r.unique,
            lost: r.lost,
            duplicated: r.duplicated,
            elapsed_s: r.elapsed.as_secs_f64(),
            hit_deadline: r.hit_deadline,
            bridge_dropped: None,
        }
    }

    /// Medians of the rates, times and sizes; sums of the counts.
    pub fn combine(runs: &[Metrics]) -> Option<Metrics> {
        if runs.is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&Metrics) -> f64| median(runs.iter().map(f).collect());
        let med_opt = |f: &dyn Fn(&Metrics) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let sum = |f: &dyn Fn(&Metrics) -> u64| runs.iter().map(f).sum::<u64>();
        Some(Metrics {
            msgs_per_sec: med(&|m| m.msgs_per_sec),
            cpu_ns_per_msg: med_opt(&|m| m.cpu_ns_per_msg),
            user_ns_per_msg: med_opt(&|m| m.user_ns_per_msg),
            cpu_ms: med(&|m| m.cpu_ms),
            p50_us: med_opt(&|m| m.p50_us),
            p99_us: med_opt(&|m| m.p99_us),
            max_us: med_opt(&|m| m.max_us),
            peak_rss_kb: med(&|m| m.peak_rss_kb as f64) as u64,
            peak_reset: runs.iter().all(|m| m.peak_reset),
            rss_kb: med(&|m| m.rss_kb as f64) as u64,
            published: sum(&|m| m.published),
            expected: sum(&|m| m.expected),
            unique: sum(&|m| m.unique),
            lost: sum(&|m| m.lost),
            duplicated: sum(&|m| m.duplicated),
            elapsed_s: med(&|m| m.elapsed_s),
            hit_deadline: runs.iter().any(|m| m.hit_deadline),
            bridge_dropped: runs.iter().map(|m| m.bridge_dropped).sum::<Option<u64>>(),
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: String,
    pub closed: Vec<Metrics>,
    pub fixed: Vec<Metrics>,
}

impl ScenarioReport {
    pub fn new(name: &str) -> ScenarioReport {
        ScenarioReport {
            name: name.into(),
            closed: Vec::new(),
            fixed: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct IdleResult {
    pub idle_rss_kb: u64,
    pub conns: usize,
    pub with_conns_rss_kb: u64,
    pub after_close_rss_kb: u64,
    pub per_conn_bytes: f64,
}

#[derive(Clone, Debug)]
pub struct BurstResult {
    pub metrics: Metrics,
    /// VmRSS two seconds after the burst ended.
    pub settled_rss_kb: u64,
}

/// The restart benchmark's figures for one broker (see `--restart`).
#[derive(Clone, Debug, Default)]
pub struct RestartResult {
    pub sessions: usize,
    /// Messages the broker acknowledged while the sessions were offline.
    pub queued: u64,
    pub fill_s: f64,
    pub rss_before_kb: u64,
    /// SIGTERM to exit.
    pub stop_s: f64,
    /// The broker's directory (configuration, log, persisted state) once it stopped.
    pub disk_bytes: u64,
    /// Start of the process to its first CONNACK.
    pub start_s: f64,
    /// CPU time of the restarted process until its first CONNACK.
    pub start_cpu_ms: f64,
    pub rss_after_start_kb: u64,
    pub drain: DrainResult,
    /// CPU time of the broker while the sessions reconnected and drained.
    pub drain_cpu_ms: f64,
}

#[derive(Clone, Debug)]
pub struct BrokerReport {
    pub label: String,
    pub idle: Option<IdleResult>,
    pub scenarios: Vec<ScenarioReport>,
    pub burst: Option<BurstResult>,
    /// VmRSS `--settle-secs` after the suite (scenarios and burst) ended.
    pub after_suite_rss_kb: Option<u64>,
    pub restart: Option<RestartResult>,
    pub errors: Vec<String>,
}

impl BrokerReport {
    pub fn new(label: &str) -> BrokerReport {
        BrokerReport {
            label: label.into(),
            idle: None,
            scenarios: Vec::new(),
            burst: None,
            after_suite_rss_kb: None,
            restart: None,
            errors: Vec::new(),
        }
    }
}

/// How the bridge benchmark was set up (see `--bridge`).
#[derive(Clone, Debug)]
pub struct BridgeSetup {
    /// Mosquitto's bridge window (its `max_inflight_messages`).
    pub inflight: u16,
    /// The sink's window towards the subscriber.
    pub sink_inflight: u16,
    pub sink_core: Option<usize>,
    /// Queue bound of both bridges, in messages.
    pub queue_messages: u64,
}

pub struct Report {
    pub window: u16,
    pub payload: usize,
    pub pin_core: Option<usize>,
    pub rate: u64,
    pub messages: u64,
    pub idle_conns: usize,
    pub burst_messages: u64,
    /// `--one-per-packet N`: one packet per write call, publisher window N.
    pub one_per_packet: Option<u16>,
    /// `--persistence`: both brokers persist, subscribers keep sessions.
    pub persistence: bool,
    pub brokers: Vec<BrokerReport>,
    /// Set for the bridge benchmark.
    pub bridge: Option<BridgeSetup>,
    /// The restart benchmark ran instead of the broker suite.
    pub restart: bool,
}

/// Aims for edgemq's memory use, printed next to the measurements.
const AIM_IDLE_KB: f64 = 10.0 * 1024.0;
const AIM_PER_CONN_BYTES: f64 = 8.0 * 1024.0;
const AIM_BURST_KB: f64 = 64.0 * 1024.0;

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100_000.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.decimals$}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

struct Table {
    labels: Vec<String>,
    out: String,
    ratio: bool,
}

impl Table {
    fn new(labels: Vec<String>) -> Table {
        let ratio = labels.len() == 2;
        let mut t = Table {
            labels,
            out: String::new(),
            ratio,
        };
        let mut head = format!("{:<16} {:<22}", "scenario", "figure");
        for l in &t.labels {
            let _ = write!(head, " {l:>14}");
        }
        if t.ratio {
            let _ = write!(head, " {:>8}", "ratio");
        }
        let _ = writeln!(t.out, "{head}");
        let _ = writeln!(t.out, "{}", "-".repeat(head.len()));
        t
    }

    /// A row of numbers; the ratio column is first / second.
    fn row(&mut self, scenario: &str, figure: &str, vals: &[Option<f64>], decimals: usize) {
        let cells: Vec<String> = vals.iter().map(|v| fmt_num(*v, decimals)).collect();
        let r = if self.ratio {
            ratio(vals[0], vals[1])
        } else {
            String::new()
        };
        self.text_row(scenario, figure, &cells, &r);
    }

    fn text_row(&mut self, scenario: &str, figure: &str, cells: &[String], r: &str) {
        let mut line = format!("{scenario:<16} {figure:<22}");
        for c in cells {
            let _ = write!(line, " {c:>14}");
        }
        if self.ratio {
            let _ = write!(line, " {r:>8}");
        }
        let _ = writeln!(self.out, "{}", line.trim_end());
    }

    fn gap(&mut self) {
        self.out.push('\n');
    }
}

impl Report {
    pub fn to_table(&self) -> String {
        if let Some(b) = &self.bridge {
            return self.to_bridge_table(b);
        }
        if self.restart {
            return self.to_restart_table();
        }
        let mut out = String::new();
        let labels: Vec<String> = self.brokers.iter().map(|b| b.label.clone()).collect();
        let _ = writeln!(
            out,
            "\nedgemq-bench: payload {} B, inflight window {}, closed-loop {} deliveries, fixed rate {} deliveries/s, {}",
            self.payload,
            self.window,
            self.messages,
            self.rate,
            match self.pin_core {
                Some(c) => format!("brokers pinned to core {c}"),
                None => "brokers not pinned".into(),
            }
        );
        if let Some(n) = self.one_per_packet {
            let _ = writeln!(
                out,
                "one message per packet: one PUBLISH per write call, at most {n} unacknowledged per publisher{}; subscribers write each PUBACK alone; broker window {}",
                if n == 1 { " (each waits for its PUBACK)" } else { "" },
                self.window
            );
        }
        if self.persistence {
            let _ = writeln!(
                out,
                "persistence on in both brokers; subscribers with persistent sessions (clean session 0)"
            );
        }
        if labels.len() == 2 {
            let _ = writeln!(out, "ratio = {} / {}\n", labels[0], labels[1]);
        } else {
            out.push('\n');
        }
        let mut t = Table::new(labels.clone());
        self.scenario_rows(&mut t, false);

        // Memory.
        let idle: Vec<Option<&IdleResult>> = self.brokers.iter().map(|b| b.idle.as_ref()).collect();
        let burst: Vec<Option<&BurstResult>> =
            self.brokers.iter().map(|b| b.burst.as_ref()).collect();
        let v = |f: &dyn Fn(&IdleResult) -> f64| idle.iter().map(|i| i.map(f)).collect::<Vec<_>>();
        t.row("memory", "idle RSS MB", &v(&|i| mb(i.idle_rss_kb)), 1);
        t.row(
            "",
            &format!("RSS MB, {} idle conns", self.idle_conns),
            &v(&|i| mb(i.with_conns_rss_kb)),
            1,
        );
        t.row(
            "",
            "KB per idle conn",
            &v(&|i| i.per_conn_bytes / 1024.0),
            2,
        );
        t.row(
            "",
            "RSS MB after closing",
            &v(&|i| mb(i.after_close_rss_kb)),
            1,
        );
        let bv =
            |f: &dyn Fn(&BurstResult) -> f64| burst.iter().map(|b| b.map(f)).collect::<Vec<_>>();
        let bname = format!("burst {}M", self.burst_messages as f64 / 1e6);
        t.row(&bname, "msgs/s", &bv(&|b| b.metrics.msgs_per_sec), 0);
        t.row(
            "",
            "CPU ns/msg",
            &bv(&|b| b.metrics.cpu_ns_per_msg.unwrap_or(0.0)),
            0,
        );
        t.row("", "peak RSS MB", &bv(&|b| mb(b.metrics.peak_rss_kb)), 1);
        t.row("", "RSS MB 2 s after", &bv(&|b| mb(b.settled_rss_kb)), 1);
        let after: Vec<Option<f64>> = self
            .brokers
            .iter()
            .map(|b| b.after_suite_rss_kb.map(mb))
            .collect();
        t.row("after the suite", "RSS MB", &after, 1);
        let bl: Vec<String> = burst
            .iter()
            .map(|b| match b {
                Some(b) => format!("{}/{}", b.metrics.lost, b.metrics.duplicated),
                None => "-".into(),
            })
            .collect();
        t.text_row("", "lost/dup", &bl, "");
        out.push_str(&t.out);

        // Aims (they concern edgemq, the first column).
        if let Some(first) = self.brokers.first() {
            let _ = writeln!(out, "\naims for {}:", first.label);
            let check = |ok: Option<bool>| match ok {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            let i = first.idle.as_ref();
            let _ = writeln!(
                out,
                "  idle RSS <= 10 MB ................ {}",
                check(i.map(|i| (i.idle_rss_kb as f64) <= AIM_IDLE_KB))
            );
            let _ = writeln!(
                out,
                "  <= 8 KB per idle connection ...... {}",
                check(
                    i.filter(|i| i.conns > 0)
                        .map(|i| i.per_conn_bytes <= AIM_PER_CONN_BYTES)
                )
            );
            let _ = writeln!(
                out,
                "  RSS <= 64 MB after the burst ..... {}{}",
                check(
                    first
                        .burst
                        .as_ref()
                        .map(|b| (b.metrics.peak_rss_kb as f64) <= AIM_BURST_KB)
                ),
                if self.burst_messages < 10_000_000 {
                    " (peak; the aim is stated for 10M messages: --burst-messages 10000000)"
                } else {
                    " (peak)"
                }
            );
        }
        let _ = writeln!(
            out,
            "\nlost = expected - unique received (per subscriber, summed); dup = received - unique; T = phase hit its time bound"
        );
        for b in &self.brokers {
            for e in &b.errors {
                let _ = writeln!(out, "error ({}): {e}", b.label);
            }
        }
        out
    }

    /// One block of rows per scenario: rate, CPU, latency, memory, losses.
    fn scenario_rows(&self, t: &mut Table, bridge: bool) {
        let n = self.brokers.first().map(|b| b.scenarios.len()).unwrap_or(0);
        for si in 0..n {
            let name = &self.brokers[0].scenarios[si].name;
            let closed: Vec<Option<Metrics>> = self
                .brokers
                .iter()
                .map(|b| Metrics::combine(&b.scenarios[si].closed))
                .collect();
            let fixed: Vec<Option<Metrics>> = self
                .brokers
                .iter()
                .map(|b| Metrics::combine(&b.scenarios[si].fixed))
                .collect();
            let pick = |v: &[Option<Metrics>], f: &dyn Fn(&Metrics) -> Option<f64>| {
                v.iter().map(|m| m.as_ref().and_then(f)).collect::<Vec<_>>()
            };
            t.row(
                name,
                if bridge {
                    "fwd msgs/s (max)"
                } else {
                    "msgs/s (max)"
                },
                &pick(&closed, &|m| Some(m.msgs_per_sec)),
                0,
            );
            t.row(
                "",
                if bridge {
                    "local CPU ns/msg"
                } else {
                    "CPU ns/msg"
                },
                &pick(&closed, &|m| m.cpu_ns_per_msg),
                0,
            );
            t.row(
                "",
                "  of which user",
                &pick(&closed, &|m| m.user_ns_per_msg),
                0,
            );
            t.row(
                "",
                &format!("p50 us @{}/s", self.rate),
                &pick(&fixed, &|m| m.p50_us),
                0,
            );
            t.row(
                "",
                &format!("p99 us @{}/s", self.rate),
                &pick(&fixed, &|m| m.p99_us),
                0,
            );
            t.row(
                "",
                if bridge {
                    "local peak RSS MB"
                } else {
                    "peak RSS MB"
                },
                &pick(&closed, &|m| Some(mb(m.peak_rss_kb))),
                1,
            );
            t.row(
                "",
                if bridge {
                    "local RSS MB at end"
                } else {
                    "RSS MB at end"
                },
                &pick(&closed, &|m| Some(mb(m.rss_kb))),
                1,
            );
            let loss = |v: &[Option<Metrics>]| -> Vec<String> {
                v.iter()
                    .map(|m| match m {
                        Some(m) => format!(
                            "{}/{}{}",
                            m.lost,
                            m.duplicated,
                            if m.hit_deadline { " T" } else { "" }
                        ),
                        None => "-".into(),
                    })
                    .collect()
            };
            t.text_row("", "lost/dup (max)", &loss(&closed), "");
            t.text_row("", "lost/dup (fixed)", &loss(&fixed), "");
            if bridge {
                let drops = |v: &[Option<Metrics>]| -> Vec<String> {
                    v.iter()
                        .map(|m| match m.as_ref().and_then(|m| m.bridge_dropped) {
                            Some(d) => d.to_string(),
                            None => "-".into(),
                        })
                        .collect()
                };
                t.text_row("", "bridge drops (max)", &drops(&closed), "");
                t.text_row("", "bridge drops (fixed)", &drops(&fixed), "");
            }
            t.gap();
        }
    }

    fn to_bridge_table(&self, b: &BridgeSetup) -> String {
        let mut out = String::new();
        let labels: Vec<String> = self.brokers.iter().map(|b| b.label.clone()).collect();
        let _ = writeln!(
            out,
            "\nedgemq-bench --bridge: local broker with a bridge -> Mosquitto sink; payload {} B, QoS 1 publishers (window {}) on the local broker, one QoS 1 subscriber on the sink",
            self.payload, self.window
        );
        let _ = writeln!(
            out,
            "closed-loop {} messages, fixed rate {} msgs/s; Mosquitto bridge window {} (edgemq's: 256), queue bound {} messages on both; sink window {}; {}",
            self.messages,
            self.rate,
            b.inflight,
            b.queue_messages,
            b.sink_inflight,
            match (self.pin_core, b.sink_core) {
                (Some(c), Some(s)) => format!("local brokers pinned to core {c}, sink to core {s}"),
                _ => "brokers not pinned".into(),
            }
        );
        if labels.len() == 2 {
            let _ = writeln!(out, "ratio = {} / {}\n", labels[0], labels[1]);
        } else {
            out.push('\n');
        }
        let mut t = Table::new(labels);
        self.scenario_rows(&mut t, true);
        out.push_str(&t.out);
        let _ = writeln!(
            out,
            "fwd msgs/s = unique messages at the sink's subscriber / (last receipt - first publish); latency = local publish -> sink delivery;\nlocal CPU and RSS are the local broker's (the one with the bridge)"
        );
        let _ = writeln!(
            out,
            "lost = published (acknowledged by the local broker) - unique received at the sink; dup = received - unique; T = phase hit its time bound;\nbridge drops = edgemq_bridge_dropped_total during the phase (edgemq only)"
        );
        for b in &self.brokers {
            for e in &b.errors {
                let _ = writeln!(out, "error ({}): {e}", b.label);
            }
        }
        out
    }

    fn to_restart_table(&self) -> String {
        let mut out = String::new();
        let labels: Vec<String> = self.brokers.iter().map(|b| b.label.clone()).collect();
        let r: Vec<Option<&RestartResult>> =
            self.brokers.iter().map(|b| b.restart.as_ref()).collect();
        let first = r.iter().flatten().next();
        let _ = writeln!(
            out,
            "\nedgemq-bench --restart: {} persistent sessions (clean session 0, one QoS 1 subscription each), {} QoS 1 messages of {} B queued for them while offline, SIGTERM, start again on the same state; persistence on; {}",
            first.map_or(0, |r| r.sessions),
            self.messages,
            self.payload,
            match self.pin_core {
                Some(c) => format!("brokers pinned to core {c}"),
                None => "brokers not pinned".into(),
            }
        );
        if labels.len() == 2 {
            let _ = writeln!(out, "ratio = {} / {}\n", labels[0], labels[1]);
        } else {
            out.push('\n');
        }
        let mut t = Table::new(labels);
        let v = |f: &dyn Fn(&RestartResult) -> f64| r.iter().map(|x| x.map(f)).collect::<Vec<_>>();
        t.row("before", "queued (acked)", &v(&|x| x.queued as f64), 0);
        t.row("", "fill s", &v(&|x| x.fill_s), 2);
        t.row("", "RSS MB", &v(&|x| mb(x.rss_before_kb)), 1);
        t.row("stop", "SIGTERM to exit s", &v(&|x| x.stop_s), 2);
        t.row(
            "",
            "on disk MB",
            &v(&|x| x.disk_bytes as f64 / 1048576.0),
            1,
        );
        t.row("start", "to first CONNACK s", &v(&|x| x.start_s), 2);
        t.row("", "CPU ms until then", &v(&|x| x.start_cpu_ms), 0);
        t.row("", "RSS MB", &v(&|x| mb(x.rss_after_start_kb)), 1);
        t.row(
            "drain",
            "all sessions back s",
            &v(&|x| x.drain.elapsed.as_secs_f64()),
            2,
        );
        t.row("", "CPU ms", &v(&|x| x.drain_cpu_ms), 0);
        let lost: Vec<String> = r
            .iter()
            .map(|x| match x {
                Some(x) => format!(
                    "{}/{}",
                    x.drain.expected.saturating_sub(x.drain.unique),
                    x.drain.received - x.drain.unique
                ),
                None => "-".into(),
            })
            .collect();
        t.text_row("", "lost/dup", &lost, "");
        out.push_str(&t.out);
        let _ = writeln!(
            out,
            "\nlost = queued (acknowledged before the restart) - unique received after it; dup = received - unique;\ndrain = every session reconnected (clean session 0) and got its share, or went quiet"
        );
        for b in &self.brokers {
            for e in &b.errors {
                let _ = writeln!(out, "error ({}): {e}", b.label);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_sums() {
        let m = |rate: f64, lost: u64| Metrics {
            msgs_per_sec: rate,
            lost,
            ..Default::default()
        };
        let c = Metrics::combine(&[m(1.0, 1), m(5.0, 2), m(3.0, 0)]).unwrap();
        assert_eq!(c.msgs_per_sec, 3.0);
        assert_eq!(c.lost, 3);
        assert!(Metrics::combine(&[]).is_none());
    }
}
