//! The objects an import makes, where each comes from, and the small builders the
//! mapping of the broker, its bridges and certbot's certificates share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::conf::{self, Directive};
use crate::api::{Bridge, Broker, MqttUser};
use crate::import::{ImportError, Loss, Pos};

/// What [`super::map::map`] reads.
pub struct Input<'a> {
    /// Every directive, `include_dir` followed.
    pub directives: &'a [Directive],
    /// Contents of each file of [`super::map::files_needed`].
    pub files: &'a BTreeMap<PathBuf, Vec<u8>>,
    /// Name of the Broker to make.
    pub broker: &'a str,
    /// The configuration file given.
    pub conf: &'a Path,
}

/// An object and where in the input it comes from.
#[derive(Clone, Debug)]
pub struct Placed<T> {
    /// The object.
    pub object: T,
    /// Its source, for a comment in the output.
    pub origin: String,
}

/// The result of an import.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The Broker.
    pub broker: Placed<Broker>,
    /// One MqttUser per password file entry.
    pub users: Vec<Placed<MqttUser>>,
    /// One Bridge per `connection`.
    pub bridges: Vec<Placed<Bridge>>,
    /// Secrets (key pairs, bridge credentials): for the secrets folder only.
    pub secrets: Vec<Placed<Secret>>,
    /// What could not be carried over; the import fails unless they are accepted.
    pub losses: Vec<Loss>,
    /// What was carried over differently, for the user to read.
    pub notes: Vec<Loss>,
    /// certbot certificates copied into Secrets, for `--propose-acme`.
    pub certbot: Vec<Certbot>,
}

/// A certbot certificate the import copied into a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certbot {
    /// certbot's name for it (the folder under `live/`).
    pub name: String,
    /// The Secret the import made of it.
    pub secret: String,
    /// DNS names of the certificate's subjectAltName, in order.
    pub dns_names: Vec<String>,
    /// The `certfile` directive naming it.
    pub pos: Pos,
}

pub(super) fn malformed(d: &Directive, message: &str) -> ImportError {
    ImportError::Malformed {
        pos: d.pos.clone(),
        message: format!("{}: {message}", d.key),
    }
}

pub(super) fn loss(d: &Directive, reason: impl Into<String>) -> Loss {
    Loss {
        pos: d.pos.clone(),
        what: d.display(),
        reason: reason.into(),
    }
}

/// A Kubernetes object name (RFC 1123 label) made from `s`, unique among `taken`.
pub(super) fn object_name(s: &str, fallback: &str, taken: &mut Vec<String>) -> String {
    let mut n: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while n.contains("--") {
        n = n.replace("--", "-");
    }
    let mut n = n.trim_matches('-').to_owned();
    n.truncate(56);
    let n = n.trim_end_matches('-');
    let base = if n.is_empty() { fallback } else { n }.to_owned();
    let mut name = base.clone();
    let mut i = 2;
    while taken.contains(&name) {
        name = format!("{base}-{i}");
        i += 1;
    }
    taken.push(name.clone());
    name
}

pub(super) fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// PEM text of a file, checked to hold what it must.
pub(super) fn pem(
    input: &Input<'_>,
    d: &Directive,
    must_hold: &str,
) -> Result<String, ImportError> {
    let path = conf::resolve(&d.rest, &d.pos);
    let bad = |message: String| ImportError::BadFile {
        file: path.clone(),
        by: Some(d.pos.clone()),
        message,
    };
    let data = input
        .files
        .get(&path)
        .ok_or_else(|| bad("not read".into()))?;
    let text = String::from_utf8(data.clone()).map_err(|_| bad("not PEM text".into()))?;
    if !text.contains("-----BEGIN ") || !text.contains(must_hold) {
        return Err(bad(format!("no PEM block with {must_hold}")));
    }
    Ok(text)
}

pub(super) fn secret(name: &str, type_: Option<&str>, data: &[(&str, String)]) -> Secret {
    Secret {
        metadata: meta(name),
        type_: type_.map(str::to_owned),
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        ),
        ..Secret::default()
    }
}
