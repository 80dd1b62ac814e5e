//! Reading Mosquitto 2.0's files: `mosquitto.conf` (following `include_dir`), the
//! password file and the ACL file, with the place of every line kept.
//!
//! The parsers are pure (text in, lines out); [`read_conf`] and [`read_file`] are the
//! only functions that touch the disk.

use std::path::{Path, PathBuf};

use crate::api::{Access, AclRule};
use crate::import::{ImportError, Pos};

/// One line of `mosquitto.conf`: `key arg arg ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The option name.
    pub key: String,
    /// The words after the key, split on spaces.
    pub args: Vec<String>,
    /// Everything after the key, trimmed: the value of options that take a string
    /// (paths may hold spaces).
    pub rest: String,
    /// Where it is written.
    pub pos: Pos,
}

impl Directive {
    /// The line as written, with the value masked for options holding a secret.
    pub fn display(&self) -> String {
        // Plugin options routinely hold database, Redis or JWT secrets.
        let secret = matches!(
            self.key.as_str(),
            "remote_password" | "bridge_psk" | "local_password" | "tls_engine_kpass_sha1"
        ) || self.key.starts_with("auth_opt_")
            || self.key.starts_with("plugin_opt_");
        if secret {
            format!("{} ***", self.key)
        } else if self.rest.is_empty() {
            self.key.clone()
        } else {
            format!("{} {}", self.key, self.rest)
        }
    }
}

/// Deepest `include_dir` nesting followed.
const MAX_INCLUDE_DEPTH: usize = 8;

/// Parses the text of one configuration file. `include_dir` lines are returned as
/// they are; [`read_conf`] follows them.
pub fn parse_conf(text: &str, file: &Path) -> Vec<Directive> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = match line.split_once([' ', '\t']) {
            Some((k, r)) => (k, r.trim()),
            None => (line, ""),
        };
        out.push(Directive {
            key: key.to_owned(),
            args: rest.split_whitespace().map(str::to_owned).collect(),
            rest: rest.to_owned(),
            pos: Pos {
                file: file.to_owned(),
                line: i + 1,
            },
        });
    }
    out
}

/// Reads `path` as a file named by `by` (None: the file given on the command line).
pub fn read_file(path: &Path, by: Option<&Pos>) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path).map_err(|source| ImportError::Read {
        file: path.to_owned(),
        by: by.cloned(),
        source,
    })
}

fn read_text(path: &Path, by: Option<&Pos>) -> Result<String, ImportError> {
    String::from_utf8(read_file(path, by)?).map_err(|_| ImportError::BadFile {
        file: path.to_owned(),
        by: by.cloned(),
        message: "not UTF-8 text".into(),
    })
}

/// A path as Mosquitto would open it, for the import: relative paths are taken from the
/// folder of the configuration file that names them.
pub fn resolve(value: &str, pos: &Pos) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_owned()
    } else {
        pos.file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Reads `path` and, in place of each `include_dir DIR`, the `*.conf` files of `DIR`
/// in Mosquitto's order (file names sorted, case-insensitively).
pub fn read_conf(path: &Path) -> Result<Vec<Directive>, ImportError> {
    let mut out = Vec::new();
    read_into(path, None, 0, &mut out)?;
    Ok(out)
}

fn read_into(
    path: &Path,
    by: Option<&Pos>,
    depth: usize,
    out: &mut Vec<Directive>,
) -> Result<(), ImportError> {
    let text = read_text(path, by)?;
    for d in parse_conf(&text, path) {
        if d.key != "include_dir" {
            out.push(d);
            continue;
        }
        if d.rest.is_empty() {
            return Err(ImportError::Malformed {
                pos: d.pos,
                message: "include_dir needs a folder".into(),
            });
        }
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(ImportError::Malformed {
                pos: d.pos,
                message: format!("include_dir nested more than {MAX_INCLUDE_DEPTH} deep"),
            });
        }
        let dir = resolve(&d.rest, &d.pos);
        let entries = std::fs::read_dir(&dir).map_err(|source| ImportError::Read {
            file: dir.clone(),
            by: Some(d.pos.clone()),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
            .collect();
        files.sort_by_key(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default()
        });
        for f in files {
            read_into(&f, Some(&d.pos), depth + 1, out)?;
        }
    }
    Ok(())
}

/// One `username:hash` line of a password file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The username, as written.
    pub username: String,
    /// The hash, as written.
    pub hash: String,
    /// Where.
    pub pos: Pos,
}

/// Parses a password file as Mosquitto does: `#` lines, blank lines and lines without
/// `:` are skipped. Hashes are not checked here.
pub fn parse_passwd(text: &str, file: &Path) -> Vec<PasswdEntry> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = raw.split_once(':') else {
            continue;
        };
        out.push(PasswdEntry {
            username: user.trim().to_owned(),
            hash: hash.trim().to_owned(),
            pos: Pos {
                file: file.to_owned(),
                line: i + 1,
            },
        });
    }
    out
}

/// An ACL rule with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedRule {
    /// The rule.
    pub rule: AclRule,
    /// Where.
    pub pos: Pos,
}

/// A Mosquitto ACL file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclFile {
    /// `topic` lines before any `user` line: clients without a username.
    pub anonymous: Vec<PlacedRule>,
    /// Each `user` block (blocks of the same user merged, in order of first mention),
    /// with the place of its first `user` line.
    pub users: Vec<(String, Pos, Vec<PlacedRule>)>,
    /// `pattern` lines, wherever they are.
    pub patterns: Vec<PlacedRule>,
}

fn access(word: &str) -> Option<Access> {
    Some(match word {
        "read" => Access::Read,
        "write" => Access::Write,
        "readwrite" => Access::Readwrite,
        "deny" => Access::Deny,
        _ => return None,
    })
}

/// `[access] topic` after `topic` or `pattern`, as Mosquitto reads it: with one word
/// it is the topic (readwrite); with more, the first is the access word and the rest
/// of the line the topic.
fn rule(rest: &str, pos: &Pos) -> Result<AclRule, ImportError> {
    let rest = rest.trim_start();
    let bad = |message: String| ImportError::Malformed {
        pos: pos.clone(),
        message,
    };
    let (access, topic) = match rest.split_once(' ') {
        None => (Access::Readwrite, rest),
        Some((word, topic)) => (
            access(word).ok_or_else(|| {
                bad(format!(
                    "invalid access `{word}` (read, write, readwrite or deny)"
                ))
            })?,
            topic.trim_start(),
        ),
    };
    if topic.is_empty() {
        return Err(bad("missing topic".into()));
    }
    if !crate::auth::acl::valid_topic_filter(topic) {
        return Err(bad(format!(
            "invalid topic `{topic}` (Mosquitto refuses to start with it)"
        )));
    }
    Ok(AclRule {
        topic: topic.to_owned(),
        access,
    })
}

/// Parses an ACL file as Mosquitto 2.0 does; an unknown line is an error, as it is for
/// Mosquitto.
pub fn parse_acl(text: &str, file: &Path) -> Result<AclFile, ImportError> {
    let mut acl = AclFile::default();
    let mut current: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start().trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let pos = Pos {
            file: file.to_owned(),
            line: i + 1,
        };
        if let Some(rest) = line.strip_prefix("topic ") {
            let r = PlacedRule {
                rule: rule(rest, &pos)?,
                pos,
            };
            match current {
                Some(u) => acl.users[u].2.push(r),
                None => acl.anonymous.push(r),
            }
        } else if let Some(rest) = line.strip_prefix("pattern ") {
            acl.patterns.push(PlacedRule {
                rule: rule(rest, &pos)?,
                pos,
            });
        } else if let Some(rest) = line.strip_prefix("user ") {
            let name = rest.trim_start();
            if name.is_empty() {
                return Err(ImportError::Malformed {
                    pos,
                    message: "missing username".into(),
                });
            }
            current = Some(match acl.users.iter().position(|(n, _, _)| n == name) {
                Some(u) => u,
                None => {
                    acl.users.push((name.to_owned(), pos, Vec::new()));
                    acl.users.len() - 1
                }
            });
        } else {
            return Err(ImportError::Malformed {
                pos,
                message: format!(
                    "invalid line `{}` (expected topic, pattern or user)",
                    line.trim_end()
                ),
            });
        }
    }
    Ok(acl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> PathBuf {
        PathBuf::from("/etc/mosquitto/x")
    }

    #[test]
    fn conf_lines_keep_their_place_and_string_values_keep_spaces() {
        let d = parse_conf(
            "# comment\n\nlistener 1883 127.0.0.1\n  certfile /a b/c.pem\nallow_anonymous\n",
            &f(),
        );
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].key.as_str(), d[0].pos.line), ("listener", 3));
        assert_eq!(d[0].args, ["1883", "127.0.0.1"]);
        assert_eq!((d[1].rest.as_str(), d[1].pos.line), ("/a b/c.pem", 4));
        assert_eq!(d[2].args, Vec::<String>::new());
        assert_eq!(d[1].pos.to_string(), "/etc/mosquitto/x:4");
    }

    #[test]
    fn include_dir_reads_conf_files_in_name_order_and_names_the_missing_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).expect("mkdir");
        std::fs::write(conf_d.join("b.conf"), "max_queued_messages 5\n").expect("w");
        std::fs::write(conf_d.join("A.conf"), "listener 1883\n").expect("w");
        std::fs::write(conf_d.join("ignored.txt"), "listener 2\n").expect("w");
        let main = dir.path().join("mosquitto.conf");
        std::fs::write(
            &main,
            "persistence true\ninclude_dir conf.d\nsys_interval 3\n",
        )
        .expect("w");
        let d = read_conf(&main).expect("read");
        let keys: Vec<_> = d.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "persistence",
                "listener",
                "max_queued_messages",
                "sys_interval"
            ]
        );
        assert_eq!(d[1].pos.file, conf_d.join("A.conf"));

        std::fs::write(&main, "include_dir missing.d\n").expect("w");
        let e = read_conf(&main).expect_err("missing folder").to_string();
        assert!(
            e.contains("missing.d") && e.contains("mosquitto.conf:1"),
            "{e}"
        );
    }

    #[test]
    fn password_lines_keep_the_hash_as_written() {
        let p = parse_passwd("# c\nalice:$7$101$abc\nnocolon\n\nbob:$6$x$y\n", &f());
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].username.as_str(), p[0].hash.as_str()),
            ("alice", "$7$101$abc")
        );
        assert_eq!(p[1].pos.line, 5);
    }

    #[test]
    fn acl_blocks_follow_mosquitto() {
        let text = "topic read public/#\n# c\nuser alice\ntopic alice/#\ntopic deny alice/secret\n\
                    pattern write devices/%u/#\nuser bob\ntopic write cmd/ with space\nuser alice\ntopic read x\n";
        let a = parse_acl(text, &f()).expect("acl");
        assert_eq!(a.anonymous.len(), 1);
        assert_eq!(a.anonymous[0].rule.access, Access::Read);
        assert_eq!(a.users.len(), 2);
        let (name, pos, rules) = &a.users[0];
        assert_eq!((name.as_str(), pos.line), ("alice", 3));
        assert_eq!(
            rules
                .iter()
                .map(|r| (r.rule.topic.as_str(), r.rule.access))
                .collect::<Vec<_>>(),
            [
                ("alice/#", Access::Readwrite),
                ("alice/secret", Access::Deny),
                ("x", Access::Read)
            ]
        );
        assert_eq!(a.users[1].2[0].rule.topic, "cmd/ with space");
        assert_eq!(a.patterns[0].rule.access, Access::Write);
    }

    #[test]
    fn a_bad_acl_line_names_its_place() {
        for (text, want) in [
            ("user a\ntopic rw x\n", ":2: invalid access `rw`"),
            ("topic read a/#/b\n", ":1: invalid topic `a/#/b`"),
            ("users a\n", ":1: invalid line `users a`"),
            ("user \n", ":1: missing username"),
        ] {
            let e = parse_acl(text, &f()).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn plugin_options_and_passwords_are_masked_where_lines_are_shown() {
        let d = parse_conf(
            "auth_opt_pg_password hunter2\nplugin_opt_jwt_secret s3cr3t\nremote_password pw\nauth_plugin /usr/lib/go-auth.so\n",
            &f(),
        );
        let shown: Vec<String> = d.iter().map(Directive::display).collect();
        assert_eq!(
            shown,
            [
                "auth_opt_pg_password ***",
                "plugin_opt_jwt_secret ***",
                "remote_password ***",
                "auth_plugin /usr/lib/go-auth.so",
            ]
        );
    }
}
