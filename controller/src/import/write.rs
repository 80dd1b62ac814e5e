//! Writing an import: the objects as YAML into the config folder, the Secrets alone
//! into the secrets folder (0600, folder 0700), each document under a comment saying
//! where in the input it comes from.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::mosquitto::objects::Placed;
use super::mosquitto::Imported;
use super::ImportError;

fn docs<T: Serialize>(items: &[Placed<T>]) -> Result<String, ImportError> {
    let mut s = String::new();
    for (i, p) in items.iter().enumerate() {
        if i > 0 {
            s.push_str("---\n");
        }
        let _ = writeln!(s, "# From {}.", p.origin);
        s.push_str(
            &serde_yaml::to_string(&p.object).map_err(|e| ImportError::Write {
                path: PathBuf::from("(yaml)"),
                message: e.to_string(),
            })?,
        );
    }
    Ok(s)
}

/// The files of an import: `(path, text, private)`. With `propose_acme` (a contact
/// email), certbot certificates are also proposed as `acme` Certificates, as comments
/// (see [`super::mosquitto::acme`]).
pub fn files(
    imported: &Imported,
    source: &Path,
    out: &Path,
    secrets: &Path,
    propose_acme: Option<&str>,
) -> Result<Vec<(PathBuf, String, bool)>, ImportError> {
    let mut head = format!(
        "# Imported from {} by `edgemq import mosquitto`.\n",
        source.display()
    );
    if !imported.secrets.is_empty() {
        let _ = writeln!(
            head,
            "# Secrets (key pairs, bridge logins) are in {}; keep that folder out of git.",
            secrets.display()
        );
    }
    for (title, list) in [
        ("Not carried over", &imported.losses),
        ("Carried over differently", &imported.notes),
    ] {
        if !list.is_empty() {
            let _ = writeln!(head, "#\n# {title}:");
            for l in list {
                let _ = writeln!(head, "#   {l}");
            }
        }
    }
    let broker = std::slice::from_ref(&imported.broker);
    let mut out_files = vec![(
        out.join("broker.yaml"),
        format!("{head}{}", docs(broker)?),
        false,
    )];
    if !imported.users.is_empty() {
        out_files.push((out.join("users.yaml"), docs(&imported.users)?, false));
    }
    if !imported.bridges.is_empty() {
        out_files.push((out.join("bridges.yaml"), docs(&imported.bridges)?, false));
    }
    if let Some(text) =
        propose_acme.and_then(|email| super::mosquitto::acme::proposal(imported, email))
    {
        out_files.push((out.join(super::mosquitto::acme::PROPOSAL_FILE), text, false));
    }
    if !imported.secrets.is_empty() {
        out_files.push((
            secrets.join("secrets.yaml"),
            format!(
                "# Secrets imported from {}: keep this folder out of git.\n{}",
                source.display(),
                docs(&imported.secrets)?
            ),
            true,
        ));
    }
    Ok(out_files)
}

/// Writes the import; refuses (writing nothing) when a file would be replaced or the
/// secrets folder lies inside the config folder.
pub fn write(
    imported: &Imported,
    source: &Path,
    out: &Path,
    secrets: &Path,
    propose_acme: Option<&str>,
) -> Result<Vec<PathBuf>, ImportError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if abs(secrets).starts_with(abs(out)) {
        return Err(ImportError::Write {
            path: secrets.to_owned(),
            message: format!(
                "the secrets folder must not be inside the config folder {} (edgemq run would read it as config, and it would be committed with it)",
                out.display()
            ),
        });
    }
    let files = files(imported, source, out, secrets, propose_acme)?;
    for (path, _, _) in &files {
        if path.exists() {
            return Err(ImportError::Write {
                path: path.clone(),
                message: "already exists; not replaced (choose another --out or --secrets)".into(),
            });
        }
    }
    let err = |path: &Path, e: &dyn std::fmt::Display| ImportError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut written = Vec::new();
    for (path, text, private) in files {
        if private {
            crate::certs::write_private(&path, text.as_bytes()).map_err(|e| err(&path, &e))?;
        } else {
            std::fs::create_dir_all(out).map_err(|e| err(out, &e))?;
            std::fs::write(&path, text).map_err(|e| err(&path, &e))?;
        }
        written.push(path);
    }
    Ok(written)
}
