//! The JSON output of a report, written by hand so that the bench tool needs no
//! serialisation crate: a small nesting writer and the report's fields in it.

use std::fmt::Write as _;

use super::{Metrics, Report};

impl Report {
    pub fn to_json(&self) -> String {
        let mut j = Json::default();
        j.open('{');
        j.key("payload_bytes").num(self.payload as f64);
        j.key("window").num(self.window as f64);
        j.key("pin_core");
        match self.pin_core {
            Some(c) => j.num(c as f64),
            None => j.null(),
        };
        j.key("rate").num(self.rate as f64);
        j.key("closed_loop_messages").num(self.messages as f64);
        j.key("idle_conns").num(self.idle_conns as f64);
        j.key("burst_messages").num(self.burst_messages as f64);
        j.key("one_per_packet")
            .opt(self.one_per_packet.map(f64::from));
        j.key("persistence").boolean(self.persistence);
        j.key("bridge");
        match &self.bridge {
            None => j.null(),
            Some(b) => {
                j.open('{');
                j.key("mosquitto_bridge_inflight").num(b.inflight as f64);
                j.key("edgemq_bridge_inflight").num(256.0);
                j.key("sink_inflight").num(b.sink_inflight as f64);
                j.key("sink_core");
                match b.sink_core {
                    Some(c) => j.num(c as f64),
                    None => j.null(),
                };
                j.key("queue_messages").num(b.queue_messages as f64);
                j.close('}')
            }
        };
        j.key("brokers").open('[');
        for b in &self.brokers {
            j.open('{');
            j.key("label").string(&b.label);
            j.key("idle");
            match &b.idle {
                None => j.null(),
                Some(i) => {
                    j.open('{');
                    j.key("idle_rss_kb").num(i.idle_rss_kb as f64);
                    j.key("conns").num(i.conns as f64);
                    j.key("with_conns_rss_kb").num(i.with_conns_rss_kb as f64);
                    j.key("after_close_rss_kb").num(i.after_close_rss_kb as f64);
                    j.key("per_conn_bytes").num(i.per_conn_bytes);
                    j.close('}')
                }
            };
            j.key("scenarios").open('[');
            for s in &b.scenarios {
                j.open('{');
                j.key("name").string(&s.name);
                j.key("closed_loop");
                metrics_json(&mut j, Metrics::combine(&s.closed).as_ref());
                j.key("fixed_rate");
                metrics_json(&mut j, Metrics::combine(&s.fixed).as_ref());
                j.key("runs").num(s.closed.len() as f64);
                j.close('}');
            }
            j.close(']');
            j.key("burst");
            match &b.burst {
                None => j.null(),
                Some(r) => {
                    j.open('{');
                    j.key("metrics");
                    metrics_json(&mut j, Some(&r.metrics));
                    j.key("settled_rss_kb").num(r.settled_rss_kb as f64);
                    j.close('}')
                }
            };
            j.key("after_suite_rss_kb");
            match b.after_suite_rss_kb {
                None => j.null(),
                Some(kb) => j.num(kb as f64),
            };
            j.key("restart");
            match &b.restart {
                None => j.null(),
                Some(r) => {
                    j.open('{');
                    j.key("sessions").num(r.sessions as f64);
                    j.key("queued").num(r.queued as f64);
                    j.key("fill_s").num(r.fill_s);
                    j.key("rss_before_kb").num(r.rss_before_kb as f64);
                    j.key("stop_s").num(r.stop_s);
                    j.key("disk_bytes").num(r.disk_bytes as f64);
                    j.key("start_s").num(r.start_s);
                    j.key("start_cpu_ms").num(r.start_cpu_ms);
                    j.key("rss_after_start_kb").num(r.rss_after_start_kb as f64);
                    j.key("drain_s").num(r.drain.elapsed.as_secs_f64());
                    j.key("drain_cpu_ms").num(r.drain_cpu_ms);
                    j.key("received").num(r.drain.received as f64);
                    j.key("unique").num(r.drain.unique as f64);
                    j.close('}')
                }
            };
            j.key("errors").open('[');
            for e in &b.errors {
                j.string(e);
            }
            j.close(']');
            j.close('}');
        }
        j.close(']');
        if self.brokers.len() == 2 {
            j.key("ratios").open('{');
            let (a, b) = (&self.brokers[0], &self.brokers[1]);
            for (sa, sb) in a.scenarios.iter().zip(&b.scenarios) {
                let (ca, cb) = (Metrics::combine(&sa.closed), Metrics::combine(&sb.closed));
                let (fa, fb) = (Metrics::combine(&sa.fixed), Metrics::combine(&sb.fixed));
                let r = |x: Option<f64>, y: Option<f64>| match (x, y) {
                    (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                    _ => None,
                };
                j.key(&sa.name).open('{');
                j.key("msgs_per_sec");
                j.opt(r(
                    ca.as_ref().map(|m| m.msgs_per_sec),
                    cb.as_ref().map(|m| m.msgs_per_sec),
                ));
                j.key("cpu_ns_per_msg");
                j.opt(r(
                    ca.as_ref().and_then(|m| m.cpu_ns_per_msg),
                    cb.as_ref().and_then(|m| m.cpu_ns_per_msg),
                ));
                j.key("user_ns_per_msg");
                j.opt(r(
                    ca.as_ref().and_then(|m| m.user_ns_per_msg),
                    cb.as_ref().and_then(|m| m.user_ns_per_msg),
                ));
                j.key("p50_us");
                j.opt(r(
                    fa.as_ref().and_then(|m| m.p50_us),
                    fb.as_ref().and_then(|m| m.p50_us),
                ));
                j.key("p99_us");
                j.opt(r(
                    fa.as_ref().and_then(|m| m.p99_us),
                    fb.as_ref().and_then(|m| m.p99_us),
                ));
                j.key("peak_rss_kb");
                j.opt(r(
                    ca.as_ref().map(|m| m.peak_rss_kb as f64),
                    cb.as_ref().map(|m| m.peak_rss_kb as f64),
                ));
                j.close('}');
            }
            j.close('}');
        }
        j.close('}');
        j.out
    }
}

fn metrics_json(j: &mut Json, m: Option<&Metrics>) {
    let Some(m) = m else {
        j.null();
        return;
    };
    j.open('{');
    j.key("msgs_per_sec").num(m.msgs_per_sec);
    j.key("cpu_ns_per_msg").opt(m.cpu_ns_per_msg);
    j.key("user_ns_per_msg").opt(m.user_ns_per_msg);
    j.key("cpu_ms").num(m.cpu_ms);
    j.key("p50_us").opt(m.p50_us);
    j.key("p99_us").opt(m.p99_us);
    j.key("max_us").opt(m.max_us);
    j.key("peak_rss_kb").num(m.peak_rss_kb as f64);
    j.key("peak_is_per_phase").boolean(m.peak_reset);
    j.key("rss_kb").num(m.rss_kb as f64);
    j.key("published").num(m.published as f64);
    j.key("expected").num(m.expected as f64);
    j.key("unique").num(m.unique as f64);
    j.key("lost").num(m.lost as f64);
    j.key("duplicated").num(m.duplicated as f64);
    j.key("elapsed_s").num(m.elapsed_s);
    j.key("hit_time_bound").boolean(m.hit_deadline);
    j.key("bridge_dropped")
        .opt(m.bridge_dropped.map(|d| d as f64));
    j.close('}');
}

/// A minimal JSON writer (keeps the tool free of extra dependencies).
#[derive(Default)]
struct Json {
    out: String,
    /// Whether the current container already has an element.
    has_item: Vec<bool>,
    after_key: bool,
}

impl Json {
    fn sep(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(h) = self.has_item.last_mut() {
            if *h {
                self.out.push(',');
            }
            *h = true;
        }
    }
    fn open(&mut self, c: char) -> &mut Self {
        self.sep();
        self.out.push(c);
        self.has_item.push(false);
        self
    }
    fn close(&mut self, c: char) -> &mut Self {
        self.out.push(c);
        self.has_item.pop();
        self
    }
    fn key(&mut self, k: &str) -> &mut Self {
        self.string(k);
        self.out.push(':');
        self.after_key = true;
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.sep();
        self.out.push('"');
        for ch in s.chars() {
            match ch {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
        self
    }
    fn num(&mut self, v: f64) -> &mut Self {
        self.sep();
        if v.is_finite() {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                let _ = write!(self.out, "{}", v as i64);
            } else {
                let _ = write!(self.out, "{v:.3}");
            }
        } else {
            self.out.push_str("null");
        }
        self
    }
    fn opt(&mut self, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) => self.num(v),
            None => self.null(),
        }
    }
    fn null(&mut self) -> &mut Self {
        self.sep();
        self.out.push_str("null");
        self
    }
    fn boolean(&mut self, b: bool) -> &mut Self {
        self.sep();
        self.out.push_str(if b { "true" } else { "false" });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_writer_nests_and_escapes() {
        let mut j = Json::default();
        j.open('{');
        j.key("a").num(1.0);
        j.key("b").open('[');
        j.string("x\"y").null().num(2.5);
        j.close(']');
        j.key("c").boolean(true);
        j.close('}');
        assert_eq!(j.out, r#"{"a":1,"b":["x\"y",null,2.500],"c":true}"#);
    }
}
