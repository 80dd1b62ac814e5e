//! The visibility check: before the CA is asked to validate, every name server of
//! the list must answer the TXT query with the challenge value. Each poll asks the
//! servers directly with a fresh resolver (no cache), so an early "no such name" is
//! not remembered.
//!
//! Name servers are `host:port`; the default is the zone's authoritative name
//! servers, found through the system's resolver (its NS records), so the check sees
//! what the CA's resolver will see.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, Resolver};

/// Pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `host:port` with a non-empty host and a port 1–65535 (`[v6]:port` too).
pub(crate) fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            let v6 = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            let host_ok = match v6 {
                Some(h) => h.parse::<std::net::Ipv6Addr>().is_ok(),
                None => {
                    !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace)
                }
            };
            host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// Which name servers are asked, and for how long.
#[derive(Debug, Clone)]
pub struct Propagation {
    nameservers: Vec<String>,
    timeout: Duration,
}

/// Why the visibility check could not be set up, or the record was not seen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listed name server is not `host:port`.
    #[error("propagation: nameserver `{0}` is not host:port")]
    Nameserver(String),
    /// A listed name server's host could not be resolved.
    #[error("propagation: nameserver `{server}`: {source}")]
    Resolve {
        /// As listed.
        server: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A listed name server's host has no address.
    #[error("propagation: nameserver `{0}` has no address")]
    NoAddress(String),
    /// The system's resolver configuration cannot be read.
    #[error("propagation: the system resolver configuration: {0}")]
    SystemResolver(#[source] ResolveError),
    /// The authoritative name servers were not found in time.
    #[error("could not find the authoritative name servers of {name} within {seconds}s; list them in propagation.nameservers")]
    FindServersTimeout {
        /// The record name.
        name: String,
        /// The time waited.
        seconds: u64,
    },
    /// The zone's name servers have no address.
    #[error("propagation: the name servers of zone `{0}` have no address; list them in propagation.nameservers")]
    ServersWithoutAddress(String),
    /// No zone holding the name has NS records the resolver can find.
    #[error("propagation: no zone holding {0} has NS records the resolver can find; list name servers in propagation.nameservers")]
    NoZone(String),
    /// Some name servers did not answer with the value in time.
    #[error("TXT record {name} with the challenge value not visible after {seconds}s: {}", lacking_text(.lacking))]
    NotVisible {
        /// The record name.
        name: String,
        /// The time waited.
        seconds: u64,
        /// Each server that lacked the value, with what it answered last.
        lacking: Vec<(String, Answer)>,
    },
}

fn lacking_text(lacking: &[(String, Answer)]) -> String {
    let why: Vec<String> = lacking
        .iter()
        .map(|(label, a)| format!("{label} answered {a}"))
        .collect();
    why.join("; ")
}

/// What one name server answered the last time it was asked.
#[derive(Debug)]
pub enum Answer {
    /// The record's values.
    Values(Vec<String>),
    /// No such name, or no TXT record.
    NoRecord,
    /// The query failed.
    Error(ResolveError),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Values(v) => write!(f, "TXT {v:?}"),
            Answer::NoRecord => f.write_str("no TXT record"),
            Answer::Error(e) => write!(f, "error: {e}"),
        }
    }
}

impl Propagation {
    /// `nameservers` empty means the zone's authoritative name servers.
    pub fn new(nameservers: Vec<String>, timeout: Duration) -> Result<Propagation, Error> {
        if let Some(bad) = nameservers.iter().find(|s| !is_host_port(s)) {
            return Err(Error::Nameserver(bad.clone()));
        }
        Ok(Propagation {
            nameservers,
            timeout,
        })
    }

    /// Waits until every name server answers the TXT query for `name` with `value`
    /// among its values; the error says what each server that lacked it answered last.
    pub async fn wait_visible(&self, name: &str, value: &str) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let servers = match tokio::time::timeout(self.timeout, self.servers(name)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::FindServersTimeout {
                    name: name.to_string(),
                    seconds: self.timeout.as_secs(),
                })
            }
        };
        let mut pending: Vec<(String, SocketAddr, Answer)> = servers
            .into_iter()
            .map(|(label, addr)| (label, addr, Answer::NoRecord))
            .collect();
        loop {
            for (_, addr, last) in pending.iter_mut() {
                *last = query_txt(*addr, name).await;
            }
            pending.retain(
                |(_, _, a)| !matches!(a, Answer::Values(v) if v.iter().any(|x| x == value)),
            );
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
                return Err(Error::NotVisible {
                    name: name.to_string(),
                    seconds: self.timeout.as_secs(),
                    lacking: pending.into_iter().map(|(l, _, a)| (l, a)).collect(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The servers to ask, each with the label used in messages.
    async fn servers(&self, name: &str) -> Result<Vec<(String, SocketAddr)>, Error> {
        if !self.nameservers.is_empty() {
            let mut out = Vec::new();
            for s in &self.nameservers {
                let addr = tokio::net::lookup_host(s.as_str())
                    .await
                    .map_err(|source| Error::Resolve {
                        server: s.clone(),
                        source,
                    })?
                    .next()
                    .ok_or_else(|| Error::NoAddress(s.clone()))?;
                out.push((s.clone(), addr));
            }
            return Ok(out);
        }
        authoritative_servers(name).await
    }
}

/// The NS records of the closest enclosing zone of `name`, each resolved to an
/// address, through the system's resolver.
async fn authoritative_servers(name: &str) -> Result<Vec<(String, SocketAddr)>, Error> {
    let resolver = Resolver::builder_tokio()
        .map_err(Error::SystemResolver)?
        .build();
    servers_of_zone(&resolver, name).await
}

/// The authoritative name servers of the zone holding `name` (each `name (address)`
/// and its port-53 address), found by asking the resolver at `resolver` instead of
/// the system's: what the default visibility check asks.
pub async fn authoritative_servers_via(
    resolver: SocketAddr,
    name: &str,
) -> Result<Vec<(String, SocketAddr)>, Error> {
    let config = ResolverConfig::from_parts(
        None,
        vec![],
        vec![NameServerConfig::new(resolver, Protocol::Udp)],
    );
    let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(ResolverOpts::default())
        .build();
    servers_of_zone(&resolver, name).await
}

async fn servers_of_zone(
    resolver: &Resolver<TokioConnectionProvider>,
    name: &str,
) -> Result<Vec<(String, SocketAddr)>, Error> {
    for zone in super::zone_candidates(name) {
        let Ok(ns) = resolver.lookup(format!("{zone}."), RecordType::NS).await else {
            continue;
        };
        let hosts: Vec<String> = ns
            .record_iter()
            .filter(|r| r.name().to_ascii().trim_end_matches('.') == zone)
            .filter_map(|r| match r.data() {
                RData::NS(n) => Some(n.0.to_ascii()),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            continue;
        }
        let mut out = Vec::new();
        for h in hosts {
            if let Ok(ips) = resolver.lookup_ip(h.as_str()).await {
                if let Some(ip) = ips.iter().next() {
                    out.push((
                        format!("{} ({ip})", h.trim_end_matches('.')),
                        SocketAddr::new(ip, 53),
                    ));
                }
            }
        }
        if out.is_empty() {
            return Err(Error::ServersWithoutAddress(zone));
        }
        return Ok(out);
    }
    Err(Error::NoZone(name.to_string()))
}

/// Asks `addr` for the TXT record `name`, bypassing every cache.
async fn query_txt(addr: SocketAddr, name: &str) -> Answer {
    let mut opts = ResolverOpts::default();
    opts.attempts = 1;
    opts.timeout = Duration::from_secs(5);
    opts.cache_size = 1;
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    opts.edns0 = true;
    let config = ResolverConfig::from_parts(
        None,
        vec![],
        vec![NameServerConfig::new(addr, Protocol::Udp)],
    );
    let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    match resolver
        .txt_lookup(format!("{}.", name.trim_end_matches('.')))
        .await
    {
        Ok(l) => Answer::Values(
            l.iter()
                .map(|t| {
                    t.txt_data()
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect::<String>()
                })
                .collect(),
        ),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::NoRecord,
        Err(e) => Answer::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert!(is_host_port("127.0.0.1:53") && is_host_port("ns1.example.com:5353"));
        assert!(is_host_port("[::1]:53"));
        assert!(!is_host_port("127.0.0.1") && !is_host_port(":53") && !is_host_port("a:0"));
        assert!(!is_host_port("::1:53"));
    }
}
