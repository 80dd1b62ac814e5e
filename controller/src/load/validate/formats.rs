//! Checks of a single value's form (host names, durations, addresses, topic filters):
//! pure string predicates, kept apart from the validation of objects that calls them.

use std::net::IpAddr;

use crate::auth::acl::valid_topic_filter;

/// The bind address as an IP; `None` for "every interface" (the default, `0.0.0.0`,
/// `::`) or a host name, which may overlap anything.
pub(super) fn bind_ip(addr: Option<&str>) -> Option<IpAddr> {
    addr.and_then(|a| a.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
}

/// Why `filter` is not a valid ACL topic filter; `patterns` allows `%u` and `%c`.
pub fn filter_error(filter: &str, patterns: bool) -> Option<String> {
    if filter.chars().any(|c| c.is_control()) {
        return Some(format!(
            "topic filter {filter:?} contains a control character"
        ));
    }
    if !valid_topic_filter(filter) {
        return Some(format!(
            "invalid topic filter `{filter}`: `+` must be a whole level and `#` the whole last level"
        ));
    }
    for level in filter.split('/') {
        if level.contains("%u") || level.contains("%c") {
            if !patterns {
                return Some(format!(
                    "`%u` and `%c` are only substituted in the Broker's aclPatterns; `{filter}` would match them literally"
                ));
            }
            if level != "%u" && level != "%c" {
                return Some(format!(
                    "in `{filter}`, `%u` and `%c` must each be a whole topic level"
                ));
            }
        }
    }
    None
}

/// A DNS subdomain name (RFC 1123), as Kubernetes requires of object names.
pub(super) fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|label| dns_label(label, 253))
}

/// A DNS label (RFC 1123): lowercase alphanumerics and `-`, alphanumeric at both ends.
pub(super) fn dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Go duration as the CRD allows it: `90h`, `1h30m`, `2.5h`.
pub(super) fn go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        let valid_num = match num.split_once('.') {
            Some((a, b)) => !a.is_empty() && !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()),
            None => !num.is_empty(),
        };
        if !valid_num {
            return false;
        }
        rest = &rest[num_len..];
        match rest.chars().next() {
            Some('h' | 'm' | 's') => rest = &rest[1..],
            _ => return false,
        }
    }
    true
}

/// `host:port` with a non-empty host free of spaces and colons, and a port 1–65535.
pub(super) fn host_port(s: &str) -> bool {
    match s.split_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
        }
        None => false,
    }
}

/// Whether `host` names this machine's loopback interface.
pub(super) fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A name server address: `host:port`, or `[IPv6]:port`.
pub(super) fn nameserver_addr(s: &str) -> bool {
    host_port(s)
        || s.strip_prefix('[')
            .and_then(|r| r.split_once("]:"))
            .is_some_and(|(ip, port)| {
                ip.parse::<std::net::Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok_and(|p| p > 0)
            })
}

/// A host name or IP address to bind.
pub(super) fn bind_address(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
        || (!s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}
