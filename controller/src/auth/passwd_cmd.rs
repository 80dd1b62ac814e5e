//! `edgemq passwd`: manage a Mosquitto password file, a drop-in for `mosquitto_passwd`.
//!
//! ```text
//! edgemq passwd [-I iterations] [-c | -D] passwordfile username
//! edgemq passwd [-I iterations] [-c] -b passwordfile username password
//! edgemq passwd [-I iterations] -U passwordfile
//! ```
//!
//! Hashes are written as `$7$` (PBKDF2-HMAC-SHA512), which every Mosquitto 2.x and
//! edgemq read. Updating a user keeps every other line, comments included, in order.
//! The file is replaced atomically (written beside it, then renamed). A new file is
//! readable by its owner only (mode 0600, where `mosquitto_passwd` follows the umask);
//! an existing file keeps its mode, so a file shared with a broker running as another
//! user needs its mode set once.
//!
//! Without `-b` the password is read from standard input. On a terminal it is asked
//! twice; the terminal still shows what is typed, so where that matters pipe it in:
//! `printf '%s\n' "$PW" | edgemq passwd FILE USER`. When standard input is not a
//! terminal, one line is read and its line ending dropped.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::passwd::{hash_password_with_salt, PasswordHash, DEFAULT_ITERATIONS, SALT_LEN};

/// Arguments of `edgemq passwd`, spelled as `mosquitto_passwd` spells them.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[command(
    about = "Create or update a Mosquitto-compatible password file",
    override_usage = "edgemq passwd [-I iterations] [-c | -D] passwordfile username\n       \
                      edgemq passwd [-I iterations] [-c] -b passwordfile username password\n       \
                      edgemq passwd [-I iterations] -U passwordfile"
)]
pub struct PasswdArgs {
    /// Create a new password file; an existing one is overwritten.
    #[arg(short = 'c', conflicts_with_all = ["delete", "update"])]
    pub create: bool,
    /// Delete the user instead of setting its password.
    #[arg(short = 'D', conflicts_with_all = ["batch", "update"])]
    pub delete: bool,
    /// Batch mode: take the password from the command line.
    #[arg(short = 'b', conflicts_with = "update")]
    pub batch: bool,
    /// Hash a file of plain `username:password` lines in place. Lines that already hold
    /// a valid hash are left as they are.
    #[arg(short = 'U')]
    pub update: bool,
    /// PBKDF2 iterations of the new hashes.
    #[arg(
        short = 'I',
        value_name = "iterations",
        default_value_t = DEFAULT_ITERATIONS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub iterations: u32,
    /// Hash algorithm; only `sha512-pbkdf2` (the default) is written, accepted so that
    /// existing scripts keep working.
    #[arg(short = 'H', value_name = "algorithm", value_parser = ["sha512-pbkdf2"])]
    pub hash: Option<String>,
    /// The password file.
    #[arg(value_name = "passwordfile")]
    pub password_file: PathBuf,
    /// The user to add, update or delete.
    #[arg(value_name = "username")]
    pub username: Option<String>,
    /// The password (with `-b` only).
    #[arg(value_name = "password")]
    pub password: Option<String>,
}

/// Runs `edgemq passwd`.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    let path = args.password_file.as_path();
    let salts = random_salt;
    if args.update {
        if args.username.is_some() {
            bail!("-U takes only the password file");
        }
        let text = read_file(path)?;
        let hashed = hash_plain_file(&text, |pw| {
            hash_password_with_salt(pw, &salts(), args.iterations)
        })
        .with_context(|| format!("password file {}", path.display()))?;
        return write_file(path, &hashed);
    }

    let Some(username) = args.username.as_deref() else {
        bail!("a username is needed (edgemq passwd [-c | -D] passwordfile username)");
    };
    check_username(username)?;

    if args.delete {
        if args.password.is_some() {
            bail!("-D takes no password");
        }
        let text = read_file(path)?;
        let (remaining, found) = delete_user(&text, username);
        if !found {
            bail!(
                "user {username} not found in password file {}",
                path.display()
            );
        }
        return write_file(path, &remaining);
    }

    let password: Vec<u8> = match (args.batch, args.password) {
        (true, Some(password)) => password.into_bytes(),
        (true, None) => {
            bail!("-b needs a password (edgemq passwd -b passwordfile username password)")
        }
        (false, Some(_)) => bail!("a password on the command line needs -b"),
        (false, None) => {
            let stdin = io::stdin();
            let terminal = stdin.is_terminal();
            read_password(&mut stdin.lock(), terminal, &mut io::stderr())?
        }
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let hash = hash_password_with_salt(&password, &salts(), args.iterations);

    let existing = if args.create {
        String::new()
    } else {
        read_file(path)?
    };
    write_file(path, &set_user(&existing, username, &hash))
}

fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    salt
}

fn check_username(username: &str) -> anyhow::Result<()> {
    if username.is_empty() {
        bail!("the username may not be empty");
    }
    if username.contains(':') {
        bail!("the username may not contain ':'");
    }
    if username.contains(['\n', '\r', '\0']) {
        bail!("the username may not contain line breaks or NUL");
    }
    if username.len() > 65_535 {
        bail!("the username is longer than 65535 bytes");
    }
    Ok(())
}

/// Reads the password: asked twice on a terminal (prompts go to `prompt`), else one
/// line. The line ending (`\n` or `\r\n`) is not part of the password.
pub fn read_password(
    input: &mut dyn BufRead,
    terminal: bool,
    prompt: &mut dyn Write,
) -> anyhow::Result<Vec<u8>> {
    if !terminal {
        return read_line(input)?.context("no password on standard input");
    }
    write!(prompt, "Password: ").context("writing the prompt")?;
    prompt.flush().context("writing the prompt")?;
    let first = read_line(input)?.context("no password entered")?;
    write!(prompt, "Reenter password: ").context("writing the prompt")?;
    prompt.flush().context("writing the prompt")?;
    let second = read_line(input)?.context("no password entered")?;
    if first != second {
        bail!("passwords do not match");
    }
    Ok(first)
}

fn read_line(input: &mut dyn BufRead) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if input
        .read_until(b'\n', &mut line)
        .context("reading the password")?
        == 0
    {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(line))
}

/// The username of a password file line, as Mosquitto reads it; `None` for comments
/// and lines without `:`.
fn line_username(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user.trim())
}

fn join_lines<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Sets `username`'s hash in the text of a password file: every line of that user is
/// replaced (as `mosquitto_passwd` does), or a line is appended. Other lines stay as
/// they are, in order.
pub fn set_user(text: &str, username: &str, hash: &str) -> String {
    let entry = format!("{username}:{hash}");
    let mut found = false;
    let lines: Vec<&str> = text
        .lines()
        .map(|line| {
            if line_username(line) == Some(username) {
                found = true;
                entry.as_str()
            } else {
                line
            }
        })
        .collect();
    let mut out = join_lines(lines.into_iter());
    if !found {
        out.push_str(&entry);
        out.push('\n');
    }
    out
}

/// Removes every line of `username`; also says whether there was one.
pub fn delete_user(text: &str, username: &str) -> (String, bool) {
    let mut found = false;
    let kept = text.lines().filter(|line| {
        let mine = line_username(line) == Some(username);
        found |= mine;
        !mine
    });
    let out = join_lines(kept);
    (out, found)
}

/// Hashes a file of plain `username:password` lines (`-U`). The password is all that
/// follows the first `:`, without the line ending (`mosquitto_passwd` stops at a second
/// `:`, silently hashing a shorter password). Lines that already hold a valid hash,
/// comments and lines without `:` are kept as they are, so running `-U` twice does no
/// harm (`mosquitto_passwd` would hash the hashes).
pub fn hash_plain_file(
    text: &str,
    mut hash: impl FnMut(&[u8]) -> String,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len() * 2);
    for (index, line) in text.lines().enumerate() {
        let plain = line_username(line).and_then(|_| line.split_once(':'));
        match plain {
            Some((user, password)) if PasswordHash::parse(password.trim()).is_err() => {
                let user = user.trim();
                if user.is_empty() {
                    bail!("line {}: empty username", index + 1);
                }
                if password.is_empty() {
                    bail!("line {}: empty password for user {user}", index + 1);
                }
                out.push_str(user);
                out.push(':');
                out.push_str(&hash(password.as_bytes()));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading password file {}", path.display()))
}

/// Replaces `path` with `text` atomically: a file beside it, then a rename. An existing
/// file's permissions are kept; a new file is readable by its owner only.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let context = || format!("writing password file {}", path.display());
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(context)?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if let Ok(meta) = fs::metadata(path) {
            fs::set_permissions(&tmp, meta.permissions())?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(context)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::auth::passwd::parse_password_file;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PasswdArgs,
    }

    fn parse(argv: &[&str]) -> Result<PasswdArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("passwd").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn fixed_hash(pw: &[u8]) -> String {
        hash_password_with_salt(pw, &[9; SALT_LEN], 101)
    }

    fn verify(text: &str, user: &str, password: &[u8]) -> bool {
        parse_password_file(text)
            .iter()
            .any(|(u, h)| u == user && h.verify(password))
    }

    #[test]
    fn arguments_are_spelled_as_mosquitto_passwd_spells_them() {
        let args = parse(&["-c", "-b", "-I", "1000", "pw", "alice", "secret"]).unwrap();
        assert!(args.create && args.batch && !args.delete && !args.update);
        assert_eq!(args.iterations, 1000);
        assert_eq!(args.password_file, PathBuf::from("pw"));
        assert_eq!(args.username.as_deref(), Some("alice"));
        assert_eq!(args.password.as_deref(), Some("secret"));

        let args = parse(&["-D", "pw", "alice"]).unwrap();
        assert!(args.delete);
        assert_eq!(args.iterations, DEFAULT_ITERATIONS);

        assert!(parse(&["-U", "pw"]).unwrap().update);
        assert!(parse(&["-H", "sha512-pbkdf2", "pw", "alice"]).is_ok());
    }

    #[test]
    fn conflicting_or_unknown_flags_are_refused() {
        assert!(parse(&["-c", "-D", "pw", "alice"]).is_err());
        assert!(parse(&["-c", "-U", "pw"]).is_err());
        assert!(parse(&["-b", "-U", "pw"]).is_err());
        assert!(parse(&["-I", "0", "pw", "alice"]).is_err());
        assert!(parse(&["-H", "sha512", "pw", "alice"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn setting_a_new_user_appends_it() {
        let text = set_user("# users\nalice:x\n", "bob", "HASH");
        assert_eq!(text, "# users\nalice:x\nbob:HASH\n");
        assert_eq!(set_user("", "bob", "HASH"), "bob:HASH\n");
        assert_eq!(set_user("alice:x", "bob", "HASH"), "alice:x\nbob:HASH\n");
    }

    #[test]
    fn updating_a_user_keeps_the_others_and_their_order() {
        let text = set_user("alice:a\n# note\nbob:b\ncarol:c\n", "bob", "NEW");
        assert_eq!(text, "alice:a\n# note\nbob:NEW\ncarol:c\n");
    }

    #[test]
    fn updating_replaces_every_line_of_the_user_and_only_whole_names() {
        let text = set_user("bob:1\nbobby:2\nbob:3\n#bob:4\n", "bob", "NEW");
        assert_eq!(text, "bob:NEW\nbobby:2\nbob:NEW\n#bob:4\n");
    }

    #[test]
    fn deleting_a_user_keeps_the_others() {
        let (text, found) = delete_user("alice:a\nbob:b\n# c\ncarol:c\n", "bob");
        assert!(found);
        assert_eq!(text, "alice:a\n# c\ncarol:c\n");
        let (text, found) = delete_user("alice:a\n", "bob");
        assert!(!found);
        assert_eq!(text, "alice:a\n");
    }

    #[test]
    fn plain_file_is_hashed_in_place() {
        let hashed =
            hash_plain_file("# users\nalice:secret1\nbob:pa:ss\r\nnocolon\n", fixed_hash).unwrap();
        let lines: Vec<&str> = hashed.lines().collect();
        assert_eq!(lines[0], "# users");
        assert_eq!(lines[3], "nocolon");
        assert!(verify(&hashed, "alice", b"secret1"));
        assert!(
            verify(&hashed, "bob", b"pa:ss"),
            "passwords may hold ':'; the line ending is dropped"
        );
    }

    #[test]
    fn hashing_a_plain_file_twice_changes_nothing() {
        let once = hash_plain_file("alice:secret1\n", fixed_hash).unwrap();
        let twice = hash_plain_file(&once, |_| panic!("already hashed")).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn plain_file_with_an_empty_password_is_refused_with_its_line() {
        let err = hash_plain_file("alice:a\nbob:\n", fixed_hash).unwrap_err();
        assert_eq!(err.to_string(), "line 2: empty password for user bob");
    }

    #[test]
    fn terminal_password_is_asked_twice() {
        let mut prompts = Vec::new();
        let pw = read_password(&mut &b"s3cret\ns3cret\n"[..], true, &mut prompts).unwrap();
        assert_eq!(pw, b"s3cret");
        assert_eq!(
            String::from_utf8(prompts).unwrap(),
            "Password: Reenter password: "
        );
    }

    #[test]
    fn terminal_passwords_that_differ_are_refused() {
        let err = read_password(&mut &b"one\ntwo\n"[..], true, &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "passwords do not match");
    }

    #[test]
    fn piped_password_is_one_line_without_its_ending() {
        let mut prompts = Vec::new();
        assert_eq!(
            read_password(&mut &b"pw\r\nrest\n"[..], false, &mut prompts).unwrap(),
            b"pw"
        );
        assert!(prompts.is_empty(), "no prompt when piped");
        assert_eq!(
            read_password(&mut &b"no newline"[..], false, &mut prompts).unwrap(),
            b"no newline"
        );
        assert_eq!(
            read_password(&mut &[0xff, 0, b'\n'][..], false, &mut prompts).unwrap(),
            [0xff, 0]
        );
        assert!(read_password(&mut &b""[..], false, &mut prompts).is_err());
    }

    fn args(file: &Path, argv: &[&str]) -> PasswdArgs {
        let file = file.to_str().unwrap();
        let mut all: Vec<&str> = argv
            .iter()
            .copied()
            .filter(|a| !a.starts_with('@'))
            .collect();
        let at = argv.iter().position(|a| *a == "@file").unwrap();
        all.insert(at, file);
        parse(&all).unwrap()
    }

    #[test]
    fn create_update_and_delete_a_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");

        run(args(&file, &["-c", "-b", "@file", "alice", "secret1"])).unwrap();
        run(args(&file, &["-b", "-I", "200", "@file", "bob", "pw-bob"])).unwrap();
        run(args(&file, &["-b", "@file", "carol", "pw-carol"])).unwrap();
        run(args(&file, &["-b", "@file", "bob", "pw-bob-2"])).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let users: Vec<String> = parse_password_file(&text)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(users, ["alice", "bob", "carol"]);
        assert!(verify(&text, "alice", b"secret1"));
        assert!(verify(&text, "bob", b"pw-bob-2"));
        assert!(!verify(&text, "bob", b"pw-bob"));
        assert!(text.lines().all(|l| l.contains(":$7$101$")));

        run(args(&file, &["-D", "@file", "bob"])).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let users: Vec<String> = parse_password_file(&text)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(users, ["alice", "carol"]);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn create_overwrites_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        fs::write(&file, "old:stuff\n").unwrap();
        run(args(&file, &["-c", "-b", "@file", "alice", "secret1"])).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(verify(&text, "alice", b"secret1"));
    }

    #[test]
    fn update_mode_hashes_the_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        fs::write(&file, "alice:secret1\nbob:pw\n").unwrap();
        run(args(&file, &["-U", "@file"])).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(verify(&text, "alice", b"secret1"));
        assert!(verify(&text, "bob", b"pw"));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let shown = missing.display().to_string();

        let err = run(args(&missing, &["-b", "@file", "alice", "pw"])).unwrap_err();
        assert!(format!("{err:#}").contains(&shown), "{err:#}");
        let err = run(args(&missing, &["-D", "@file", "alice"])).unwrap_err();
        assert!(format!("{err:#}").contains(&shown), "{err:#}");
        let err = run(args(&missing, &["-U", "@file"])).unwrap_err();
        assert!(format!("{err:#}").contains(&shown), "{err:#}");

        let file = dir.path().join("passwd");
        fs::write(&file, "alice:x\n").unwrap();
        let err = run(args(&file, &["-D", "@file", "bob"])).unwrap_err();
        assert!(
            format!("{err:#}").contains(&file.display().to_string()),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains("bob"), "{err:#}");
    }

    #[test]
    fn bad_usernames_and_argument_mixes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        assert!(run(args(&file, &["-c", "-b", "@file", "a:b", "pw"])).is_err());
        assert!(run(args(&file, &["-c", "-b", "@file", "", "pw"])).is_err());
        assert!(run(args(&file, &["-c", "-b", "@file", "alice", ""])).is_err());
        assert!(run(args(&file, &["-c", "-b", "@file", "alice"])).is_err());
        assert!(run(args(&file, &["-c", "@file", "alice", "pw"])).is_err());
        assert!(run(args(&file, &["-U", "@file", "alice"])).is_err());
        assert!(!file.exists(), "nothing was written");
    }
}
