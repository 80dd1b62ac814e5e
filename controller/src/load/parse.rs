//! Files → documents → typed objects, with `file:line` for every mistake.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use super::locate::{line_of, Seg};
use super::{Kind, LoadError, Object, Resources, SourceLocation, DEFAULT_NAMESPACE};

/// Which folder a file comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootKind {
    /// The config folder: every kind.
    Config,
    /// The secrets folder: Secrets only.
    Secrets,
}

/// Collects objects and errors over one or more folders.
#[derive(Default)]
pub(crate) struct Loader {
    res: Resources,
    errors: Vec<LoadError>,
    /// Objects that were declared but could not be read; references to them are not
    /// reported again as dangling.
    broken: BTreeSet<(Kind, String, String)>,
    /// A folder or file could not be read.
    io_failed: bool,
}

impl Loader {
    pub(crate) fn read_root(&mut self, root: &Path, kind: RootKind) {
        let mut files = Vec::new();
        if root.is_file() {
            files.push(root.to_path_buf());
        } else if let Err(e) = collect_files(root, &mut files) {
            self.io_failed = true;
            self.errors.push(LoadError {
                location: None,
                object: None,
                subject: None,
                message: format!("{}: cannot read folder: {e}", root.display()),
            });
        }
        files.sort();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => self.read_file(&f, &text, kind),
                Err(e) => {
                    self.io_failed = true;
                    self.errors.push(LoadError {
                        location: Some(SourceLocation {
                            file: f.clone(),
                            line: 1,
                        }),
                        object: None,
                        subject: None,
                        message: format!("cannot read file: {e}"),
                    });
                }
            }
        }
    }

    /// Whether a folder or file could not be read (as opposed to holding mistakes).
    pub(crate) fn io_failed(&self) -> bool {
        self.io_failed
    }

    pub(crate) fn finish(self) -> (Resources, Vec<LoadError>, BTreeSet<(Kind, String, String)>) {
        (self.res, self.errors, self.broken)
    }

    pub(crate) fn read_file(&mut self, file: &Path, text: &str, root: RootKind) {
        for (start, doc) in split_documents(text) {
            self.read_document(file, start, doc, root);
        }
    }

    fn read_document(&mut self, file: &Path, start: usize, text: String, root: RootKind) {
        let at = |line: usize| SourceLocation {
            file: file.to_path_buf(),
            line: start + line.max(1) - 1,
        };
        let value: serde_yaml::Value = match serde_yaml::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                // At the end of a document the parser reports the line after it; the
                // mistake is on the document's last non-blank line at the latest.
                let last = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .last()
                    .map_or(1, |(i, _)| i + 1);
                let line = e.location().map_or(1, |l| l.line()).min(last);
                self.errors.push(LoadError {
                    location: Some(at(line)),
                    object: None,
                    subject: None,
                    message: format!("invalid YAML: {}", strip_location(&e)),
                });
                return;
            }
        };
        let map = match value {
            serde_yaml::Value::Null => return,
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                self.errors.push(LoadError {
                    location: Some(at(1)),
                    object: None,
                    subject: None,
                    message: "a document must be a mapping with apiVersion, kind and metadata"
                        .into(),
                });
                return;
            }
        };
        let field = |m: &serde_yaml::Mapping, k: &str| {
            m.get(k).and_then(|v| v.as_str()).map(str::to_string)
        };
        let kind_s = field(&map, "kind");
        let api_version = field(&map, "apiVersion");
        let meta = map.get("metadata").and_then(|m| m.as_mapping());
        let name = meta.and_then(|m| field(m, "name"));
        let namespace = meta
            .and_then(|m| field(m, "namespace"))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let line_at = |path: &[Seg<'_>]| at(line_of(&text, path).unwrap_or(1));
        let object = match (&kind_s, &name) {
            (Some(k), Some(n)) => Some(format!("{k}/{n}")),
            (Some(k), None) => Some(k.clone()),
            _ => None,
        };
        let subject = match (kind_s.as_deref().and_then(Kind::parse), &name) {
            (Some(k), Some(n)) if !n.is_empty() => Some((k, namespace.clone(), n.clone())),
            _ => None,
        };
        let mut err = |loc: SourceLocation, message: String| {
            self.errors.push(LoadError {
                location: Some(loc),
                object: object.clone(),
                subject: subject.clone(),
                message,
            })
        };

        let Some(kind_s) = kind_s else {
            err(at(1), "missing `kind`".into());
            return;
        };
        let Some(kind) = Kind::parse(&kind_s) else {
            err(
                line_at(&[Seg::Key("kind")]),
                format!(
                    "unknown kind `{kind_s}`, expected one of Broker, MqttUser, Bridge, Certificate ({}) or Secret (v1)",
                    crate::api::API_VERSION
                ),
            );
            return;
        };
        if api_version.as_deref() != Some(kind.api_version()) {
            let found = api_version
                .map(|v| format!("`{v}`"))
                .unwrap_or_else(|| "missing".into());
            err(
                line_at(&[Seg::Key("apiVersion")]),
                format!(
                    "apiVersion {found}, expected `{}` for kind {kind}",
                    kind.api_version()
                ),
            );
            return;
        }
        if root == RootKind::Secrets && kind != Kind::Secret {
            err(
                at(1),
                format!("only Secret manifests belong in the secrets folder, found a {kind}"),
            );
            return;
        }

        let mut failed = false;
        let envelope = match kind {
            Kind::Secret => check::<SecretEnvelope>(&text),
            _ => check::<CustomEnvelope>(&text),
        };
        if let Err(e) = envelope {
            failed = true;
            err(at(e.0), e.1);
        }
        let parsed = match kind {
            Kind::Broker => typed(&text).map(|o| Object::Broker(Box::new(o))),
            Kind::MqttUser => typed(&text).map(|o| Object::MqttUser(Box::new(o))),
            Kind::Bridge => typed(&text).map(|o| Object::Bridge(Box::new(o))),
            Kind::Certificate => typed(&text).map(|o| Object::Certificate(Box::new(o))),
            Kind::Secret => typed(&text).map(|o| Object::Secret(Box::new(o))),
        };
        let obj = match parsed {
            Ok(o) => Some(o),
            Err(e) => {
                failed = true;
                err(at(e.0), e.1);
                None
            }
        };
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            err(
                line_at(&[Seg::Key("metadata")]),
                "missing metadata.name".into(),
            );
            return;
        };
        let previous = self.res.get(kind, &namespace, &name).cloned();
        if let Some(prev) = previous {
            let first = prev.origin();
            err(
                line_at(&[Seg::Key("metadata"), Seg::Key("name")]),
                format!("duplicate {kind} `{name}` in namespace `{namespace}`; first defined at {first}"),
            );
            return;
        }
        match (failed, obj) {
            (false, Some(obj)) => {
                self.res.insert_parsed(obj, at(1), Arc::from(text.as_str()));
            }
            _ => {
                self.broken.insert((kind, namespace, name));
            }
        }
    }
}

/// Deserializes `text` as `T`; on error, the 1-based line in `text` and the message.
fn typed<T: DeserializeOwned>(text: &str) -> Result<T, (usize, String)> {
    serde_yaml::from_str::<T>(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(1);
        (line, strip_location(&e))
    })
}

fn check<T: DeserializeOwned>(text: &str) -> Result<(), (usize, String)> {
    typed::<T>(text).map(|_| ())
}

/// serde_yaml's message without its trailing ` at line L column C` (the caller
/// reports the line itself, in the file's terms).
fn strip_location(e: &serde_yaml::Error) -> String {
    // serde_yaml counts lines from the start of the document, not of the file; the
    // error already carries the file's line, so every inner position is removed.
    let mut s = e.to_string();
    while let Some(i) = s.find(" at line ") {
        let tail = &s[i + " at line ".len()..];
        let Some(col) = tail.find(" column ") else {
            break;
        };
        let after = &tail[col + " column ".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let end = i + " at line ".len() + col + " column ".len() + digits;
        s.replace_range(i..end, "");
    }
    s
}

/// Top-level fields of an edgemq object, so a misspelt one is reported (the typed
/// objects ignore unknown top-level and metadata fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct CustomEnvelope {
    api_version: IgnoredAny,
    kind: IgnoredAny,
    #[serde(default)]
    metadata: Option<MetaFields>,
    #[serde(default)]
    spec: Option<IgnoredAny>,
    #[serde(default)]
    status: Option<IgnoredAny>,
}

/// Top-level fields of a core v1 Secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct SecretEnvelope {
    api_version: IgnoredAny,
    kind: IgnoredAny,
    #[serde(default)]
    metadata: Option<MetaFields>,
    #[serde(default)]
    data: Option<IgnoredAny>,
    #[serde(default)]
    string_data: Option<IgnoredAny>,
    #[serde(default, rename = "type")]
    type_: Option<IgnoredAny>,
    #[serde(default)]
    immutable: Option<IgnoredAny>,
}

/// The fields of Kubernetes' ObjectMeta.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct MetaFields {
    #[serde(default)]
    name: Option<IgnoredAny>,
    #[serde(default)]
    namespace: Option<IgnoredAny>,
    #[serde(default)]
    labels: Option<IgnoredAny>,
    #[serde(default)]
    annotations: Option<IgnoredAny>,
    #[serde(default)]
    generate_name: Option<IgnoredAny>,
    #[serde(default)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default)]
    finalizers: Option<IgnoredAny>,
    #[serde(default)]
    owner_references: Option<IgnoredAny>,
    #[serde(default)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    self_link: Option<IgnoredAny>,
}

/// Every YAML file below `dir`, skipping hidden entries (`.git`, editor swap files).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type()?;
        let ft = if ft.is_symlink() {
            std::fs::metadata(&path)?.file_type()
        } else {
            ft
        };
        if ft.is_dir() {
            collect_files(&path, out)?;
        } else if ft.is_file()
            && matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a multi-document YAML stream at `---` lines. Each document keeps its lines
/// (the marker line itself blanked, so columns and line numbers stay true) and the
/// 1-based line it starts on. Documents are parsed one by one so that one broken
/// document neither hides the others nor shifts their line numbers.
pub(crate) fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    let mut ended = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
        };
        if is_marker("---") {
            if !ended {
                docs.push((start, std::mem::take(&mut cur)));
            }
            ended = false;
            start = n;
            cur.clear();
            cur.push_str(&" ".repeat(3));
            cur.push_str(&line[3..]);
            cur.push('\n');
        } else if is_marker("...") {
            if !ended {
                docs.push((start, std::mem::take(&mut cur)));
            }
            ended = true;
            start = n + 1;
        } else {
            if ended {
                ended = false;
                start = n;
            }
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !ended {
        docs.push((start, cur));
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_start_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- \nc: 3\n");
        let starts: Vec<usize> = docs.iter().map(|d| d.0).collect();
        assert_eq!(starts, vec![1, 2, 4]);
        assert_eq!(docs[1].1, "   \nb: 2\n");
    }

    #[test]
    fn a_leading_marker_gives_an_empty_first_document() {
        let docs = split_documents("---\na: 1\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].1.trim().is_empty());
    }

    #[test]
    fn serde_positions_lose_their_suffix() {
        let e = serde_yaml::from_str::<u16>("nope").unwrap_err();
        assert!(
            !strip_location(&e).contains("at line"),
            "{}",
            strip_location(&e)
        );
    }
}
