//! Mosquitto-compatible password hashes and password files.
//!
//! Three formats are read, exactly as Mosquitto reads them, and a fourth as
//! mosquitto-go-auth (the Home Assistant Mosquitto add-on's `pw` tool) writes it:
//!
//! | prefix | meaning |
//! |---|---|
//! | `$6$<salt>$<hash>` | SHA-512(password ‖ salt), one round |
//! | `$7$<iterations>$<salt>$<hash>` | PBKDF2-HMAC-SHA512, 64-byte output (`mosquitto_passwd` 2.0's default) |
//! | `$argon2id$...` | an argon2id PHC string (`mosquitto_passwd` 2.1's default) |
//! | `PBKDF2$sha512$<iterations>$<salt>$<hash>` | mosquitto-go-auth: PBKDF2-HMAC-SHA512 (or `sha256`), the hash's length is the key length |
//!
//! Salt and hash are padded standard base64; for `$6$` and `$7$` the salt must decode
//! to exactly 12 bytes and the hash to exactly 64; for `PBKDF2$` the salt (base64, go-auth's
//! default salt encoding) must not be empty and the hash has 16 to 128 bytes. Anything else is an error, never a hash that could
//! match: a malformed entry must not open access. edgemq writes `$7$` hashes, which
//! every Mosquitto 2.x reads.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Length in bytes of the salt of `$6$` and `$7$` hashes.
pub const SALT_LEN: usize = 12;
/// Length in bytes of the hash of `$6$` and `$7$` hashes.
pub const HASH_LEN: usize = 64;
/// PBKDF2 iterations `mosquitto_passwd` uses unless told otherwise.
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Why a password hash string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Not `$6$`, `$7$`, `$argon2id$` or `PBKDF2$`.
    #[error(
        "unknown password hash format (expected $6$, $7$, $argon2id$ or PBKDF2$sha512$ from mosquitto-go-auth)"
    )]
    UnknownFormat,
    /// The `$`-separated fields are missing or extra.
    #[error("malformed {format} password hash: wrong number of fields")]
    Fields {
        /// `$6$` or `$7$`.
        format: &'static str,
    },
    /// The iteration count of a `$7$` or `PBKDF2$` hash is not a positive integer.
    #[error("malformed password hash: iterations must be a positive integer")]
    Iterations,
    /// A `PBKDF2$` hash names a digest other than sha256 and sha512.
    #[error("malformed PBKDF2$ password hash: the digest must be sha512 or sha256")]
    Digest,
    /// A `PBKDF2$` salt is empty or its hash is not 16 to 128 bytes.
    #[error(
        "malformed PBKDF2$ password hash: empty salt, or a hash of {0} bytes (16 to 128 expected)"
    )]
    GoAuthLength(usize),
    /// A salt or hash field is not padded standard base64.
    #[error("malformed password hash: {field} is not valid base64")]
    Base64 {
        /// `salt` or `hash`.
        field: &'static str,
    },
    /// The salt does not decode to 12 bytes.
    #[error("malformed password hash: salt is {0} bytes, expected 12")]
    SaltLength(usize),
    /// The hash does not decode to 64 bytes.
    #[error("malformed password hash: hash is {0} bytes, expected 64")]
    HashLength(usize),
    /// An `$argon2id$` string the argon2 implementation refuses.
    #[error("malformed $argon2id$ password hash: {0}")]
    Argon2(String),
}

/// A parsed password hash. [`fmt::Display`] writes it back in Mosquitto's format.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password ‖ salt), one round.
    Sha512 {
        /// 12 random bytes.
        salt: [u8; SALT_LEN],
        /// The 64-byte digest.
        hash: [u8; HASH_LEN],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// PBKDF2 rounds, at least 1.
        iterations: u32,
        /// 12 random bytes.
        salt: [u8; SALT_LEN],
        /// The 64-byte derived key.
        hash: [u8; HASH_LEN],
    },
    /// `$argon2id$...`: the PHC string, checked to parse as argon2id.
    Argon2id(String),
    /// `PBKDF2$<digest>$<iterations>$<salt>$<hash>` (mosquitto-go-auth).
    GoAuthPbkdf2 {
        /// SHA-512 (`sha512`), else SHA-256 (`sha256`).
        sha512: bool,
        /// PBKDF2 rounds, at least 1.
        iterations: u32,
        /// The decoded salt.
        salt: Vec<u8>,
        /// The derived key; its length is the key length.
        hash: Vec<u8>,
    },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the password, but logs have no use for it either.
        let kind = match self {
            PasswordHash::Sha512 { .. } => "$6$",
            PasswordHash::Pbkdf2Sha512 { .. } => "$7$",
            PasswordHash::Argon2id(_) => "$argon2id$",
            PasswordHash::GoAuthPbkdf2 { .. } => "PBKDF2$",
        };
        write!(f, "PasswordHash({kind}…)")
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Argon2id(phc) => f.write_str(phc),
            PasswordHash::GoAuthPbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "PBKDF2${}${iterations}${}${}",
                if *sha512 { "sha512" } else { "sha256" },
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
        }
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PasswordHash::parse(s)
    }
}

impl PasswordHash {
    /// Parses a hash as found after the `:` of a password file line.
    pub fn parse(s: &str) -> Result<PasswordHash, HashError> {
        if let Some(rest) = s.strip_prefix("$6$") {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or(HashError::Fields { format: "$6$" })?;
            if hash.contains('$') {
                return Err(HashError::Fields { format: "$6$" });
            }
            Ok(PasswordHash::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if let Some(rest) = s.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(HashError::Fields { format: "$7$" });
            };
            let iterations = parse_iterations(iterations)?;
            Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if s.starts_with("$argon2id$") {
            let phc = argon2::password_hash::PasswordHash::new(s)
                .map_err(|e| HashError::Argon2(e.to_string()))?;
            if phc.algorithm != argon2::Algorithm::Argon2id.ident() {
                return Err(HashError::Argon2("not argon2id".into()));
            }
            if phc.hash.is_none() {
                return Err(HashError::Argon2("no hash".into()));
            }
            argon2::Params::try_from(&phc).map_err(|e| HashError::Argon2(e.to_string()))?;
            Ok(PasswordHash::Argon2id(s.to_owned()))
        } else if let Some(rest) = s.strip_prefix("PBKDF2$") {
            let mut fields = rest.split('$');
            let (Some(digest), Some(iterations), Some(salt), Some(hash), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(HashError::Fields { format: "PBKDF2$" });
            };
            let sha512 = match digest {
                "sha512" => true,
                "sha256" => false,
                _ => return Err(HashError::Digest),
            };
            let iterations = parse_iterations(iterations)?;
            let salt = STANDARD
                .decode(salt)
                .map_err(|_| HashError::Base64 { field: "salt" })?;
            let hash = STANDARD
                .decode(hash)
                .map_err(|_| HashError::Base64 { field: "hash" })?;
            if salt.is_empty() || !(16..=128).contains(&hash.len()) {
                return Err(HashError::GoAuthLength(hash.len()));
            }
            Ok(PasswordHash::GoAuthPbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            })
        } else {
            Err(HashError::UnknownFormat)
        }
    }

    /// Whether `password` matches. The comparison takes the same time wherever the
    /// first differing byte is. Passwords are bytes: MQTT allows binary passwords.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let computed = digest.finalize();
                bool::from(computed.as_slice().ct_eq(hash.as_slice()))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let computed = pbkdf2_sha512(password, salt, *iterations);
                bool::from(computed.ct_eq(hash))
            }
            PasswordHash::Argon2id(phc) => {
                use argon2::password_hash::PasswordVerifier as _;
                // Parsed once already in `parse`; a failure here can only mean a value
                // built by hand, and that must not open access.
                let Ok(parsed) = argon2::password_hash::PasswordHash::new(phc) else {
                    return false;
                };
                // The verifier compares in constant time.
                argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok()
            }
            PasswordHash::GoAuthPbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            } => {
                let mut computed = vec![0u8; hash.len()];
                if *sha512 {
                    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                } else {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, *iterations, &mut computed);
                }
                bool::from(computed.ct_eq(hash))
            }
        }
    }
}

fn parse_iterations(s: &str) -> Result<u32, HashError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HashError::Iterations);
    }
    match s.parse() {
        Ok(0) | Err(_) => Err(HashError::Iterations),
        Ok(n) => Ok(n),
    }
}

fn decode_salt(b64: &str) -> Result<[u8; SALT_LEN], HashError> {
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| HashError::Base64 { field: "salt" })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| HashError::SaltLength(bytes.len()))
}

fn decode_hash(b64: &str) -> Result<[u8; HASH_LEN], HashError> {
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| HashError::Base64 { field: "hash" })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| HashError::HashLength(bytes.len()))
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8; SALT_LEN], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

/// Hashes `password` as `mosquitto_passwd` 2.0 does by default: `$7$101$...` with a
/// random 12-byte salt.
pub fn hash_password(password: &[u8]) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    hash_password_with_salt(password, &salt, DEFAULT_ITERATIONS)
}

/// Hashes `password` as a `$7$` hash with the given salt and iteration count. The
/// same inputs always give the same string, which the pure plan relies on.
/// `iterations` of 0 is raised to 1 (PBKDF2 needs at least one round).
pub fn hash_password_with_salt(password: &[u8], salt: &[u8; SALT_LEN], iterations: u32) -> String {
    let iterations = iterations.max(1);
    PasswordHash::Pbkdf2Sha512 {
        iterations,
        salt: *salt,
        hash: pbkdf2_sha512(password, salt, iterations),
    }
    .to_string()
}

/// A password file line that was not used, and why; callers log it as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// The username, when the line had one.
    pub username: Option<String>,
    /// Why the line was skipped.
    pub reason: String,
}

/// Reads a Mosquitto password file: one `username:hash` per line. Comment lines
/// (starting with `#`), blank lines and lines without `:` are ignored; lines with a
/// malformed hash are dropped. See [`parse_password_file_with_skipped`] to learn
/// which lines were dropped.
pub fn parse_password_file(text: &str) -> Vec<(String, PasswordHash)> {
    parse_password_file_with_skipped(text).0
}

/// Like [`parse_password_file`], also returning each line that was not used and why
/// (comments and blank lines are not reported). The first entry of a username wins;
/// later ones are reported as skipped.
pub fn parse_password_file_with_skipped(
    text: &str,
) -> (Vec<(String, PasswordHash)>, Vec<SkippedLine>) {
    let mut users: Vec<(String, PasswordHash)> = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || raw.starts_with('#') {
            continue;
        }
        let Some((username, hash)) = raw.split_once(':') else {
            skipped.push(SkippedLine {
                line,
                username: None,
                reason: "no ':' separating username and hash".into(),
            });
            continue;
        };
        let username = username.trim();
        if username.is_empty() {
            skipped.push(SkippedLine {
                line,
                username: None,
                reason: "empty username".into(),
            });
            continue;
        }
        match PasswordHash::parse(hash.trim()) {
            Ok(parsed) => {
                if seen.insert(username.to_owned()) {
                    users.push((username.to_owned(), parsed));
                } else {
                    skipped.push(SkippedLine {
                        line,
                        username: Some(username.to_owned()),
                        reason: "duplicate username; the first entry is used".into(),
                    });
                }
            }
            Err(e) => skipped.push(SkippedLine {
                line,
                username: Some(username.to_owned()),
                reason: e.to_string(),
            }),
        }
    }
    (users, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXLmRigZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==";

    fn alice_salt() -> [u8; SALT_LEN] {
        STANDARD
            .decode("qKSz0fyQacdTZ9HB")
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn sha512_entry(password: &[u8], salt: &[u8; SALT_LEN]) -> String {
        let mut digest = Sha512::new();
        digest.update(password);
        digest.update(salt);
        format!(
            "$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(digest.finalize())
        )
    }

    /// Known answers from mosquitto-go-auth's `pw` tool: "foo" (the Home Assistant
    /// Mosquitto add-on's documentation) and "testpw" (go-auth's own tests).
    const GO_AUTH: [(&str, &str); 2] = [
        ("foo", "PBKDF2$sha512$100000$qsU7xQ8YCV/9nRuBBJVTxA==$jqw94Ej3aEr97UofY6rClmVCRkTdDiubQW0A6ZYmUI+pZjW9Hax+2w2FeYB3y5ut1SliB7+HAwIl2iONLKkohw=="),
        ("testpw", "PBKDF2$sha512$100000$os24lcPr9cJt2QDVWssblQ==$BK1BQ2wbwU1zNxv3Ml3wLuu5//hPop3/LvaPYjjCwdBvnpwusnukJPpcXQzyyjOlZdieXTx6sXAcX4WnZRZZnw=="),
    ];

    #[test]
    fn mosquitto_go_auth_pbkdf2_hashes_verify_the_right_password_only() {
        // 100,000 rounds each: slow in a debug build, so one wrong password only.
        for (password, stored) in GO_AUTH {
            let hash = PasswordHash::parse(stored).unwrap();
            assert!(hash.verify(password.as_bytes()), "{stored}");
            assert_eq!(hash.to_string(), stored);
        }
        assert!(!PasswordHash::parse(GO_AUTH[0].1).unwrap().verify(b"testpw"));
        // sha256 with a short iteration count: derived here, checked both ways.
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"pw", b"salty", 10, &mut key);
        let s = format!(
            "PBKDF2$sha256$10${}${}",
            STANDARD.encode(b"salty"),
            STANDARD.encode(key)
        );
        let hash = PasswordHash::parse(&s).unwrap();
        assert!(hash.verify(b"pw") && !hash.verify(b"pv"));
    }

    #[test]
    fn malformed_go_auth_hashes_are_refused() {
        let good_hash = STANDARD.encode([7u8; 64]);
        for bad in [
            "PBKDF2$sha512$100000$c2FsdA==".to_string(),
            format!("PBKDF2$sha512$100000$c2FsdA==${good_hash}$x"),
            format!("PBKDF2$md5$100000$c2FsdA==${good_hash}"),
            format!("PBKDF2$sha512$0$c2FsdA==${good_hash}"),
            format!("PBKDF2$sha512$-1$c2FsdA==${good_hash}"),
            format!("PBKDF2$sha512$100000$$${good_hash}"),
            format!("PBKDF2$sha512$100000$not base64$${good_hash}"),
            "PBKDF2$sha512$100000$c2FsdA==$AA==".to_string(),
            "pbkdf2$sha512$100000$c2FsdA==$AA==".to_string(),
        ] {
            assert!(PasswordHash::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn known_mosquitto_hash_verifies_the_right_password() {
        let hash = PasswordHash::parse(ALICE).unwrap();
        assert!(hash.verify(b"secret1"));
    }

    #[test]
    fn known_mosquitto_hash_refuses_a_wrong_password() {
        let hash = PasswordHash::parse(ALICE).unwrap();
        assert!(!hash.verify(b"secret2"));
        assert!(!hash.verify(b"secret"));
        assert!(!hash.verify(b""));
        assert!(!hash.verify(b"Secret1"));
    }

    #[test]
    fn pbkdf2_cannot_tell_trailing_nul_bytes_apart_as_in_every_hmac() {
        // HMAC pads a short key with zero bytes, so `secret1` and `secret1\0` are the
        // same key. Mosquitto's `$7$` hashes share this; only binary passwords care.
        let hash = PasswordHash::parse(ALICE).unwrap();
        assert!(hash.verify(b"secret1\0"));
        assert!(!hash.verify(b"\0secret1"));
    }

    #[test]
    fn hashing_with_the_known_salt_reproduces_mosquittos_hash_byte_for_byte() {
        assert_eq!(
            hash_password_with_salt(b"secret1", &alice_salt(), 101),
            ALICE
        );
    }

    #[test]
    fn parsed_hash_displays_as_the_original_string() {
        assert_eq!(PasswordHash::parse(ALICE).unwrap().to_string(), ALICE);
        let six = sha512_entry(b"pw", &[7; 12]);
        assert_eq!(PasswordHash::parse(&six).unwrap().to_string(), six);
    }

    #[test]
    fn random_hash_is_pbkdf2_with_101_iterations_and_verifies() {
        let a = hash_password(b"hunter2");
        let b = hash_password(b"hunter2");
        assert!(a.starts_with("$7$101$"), "{a}");
        assert_ne!(a, b, "each hash gets a fresh salt");
        let parsed = PasswordHash::parse(&a).unwrap();
        assert!(parsed.verify(b"hunter2"));
        assert!(!parsed.verify(b"hunter3"));
    }

    #[test]
    fn binary_passwords_hash_and_verify() {
        let password = [0u8, 255, 1, 128, b':', b'\n'];
        let hash = PasswordHash::parse(&hash_password(&password)).unwrap();
        assert!(hash.verify(&password));
        assert!(!hash.verify(&password[..5]));
    }

    #[test]
    fn custom_iteration_counts_round_trip() {
        let s = hash_password_with_salt(b"pw", &[1; 12], 1000);
        assert!(s.starts_with("$7$1000$"));
        let parsed = PasswordHash::parse(&s).unwrap();
        assert!(matches!(
            parsed,
            PasswordHash::Pbkdf2Sha512 {
                iterations: 1000,
                ..
            }
        ));
        assert!(parsed.verify(b"pw"));
        assert!(hash_password_with_salt(b"pw", &[1; 12], 0).starts_with("$7$1$"));
    }

    #[test]
    fn sha512_hash_verifies_password_followed_by_salt() {
        let entry = sha512_entry(b"secret1", &alice_salt());
        let hash = PasswordHash::parse(&entry).unwrap();
        assert!(matches!(hash, PasswordHash::Sha512 { .. }));
        assert!(hash.verify(b"secret1"));
        assert!(!hash.verify(b"secret2"));
    }

    #[test]
    fn sha512_hash_is_not_salt_followed_by_password() {
        let salt = alice_salt();
        let mut digest = Sha512::new();
        digest.update(salt);
        digest.update(b"secret1");
        let reversed = format!(
            "$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(digest.finalize())
        );
        assert!(!PasswordHash::parse(&reversed).unwrap().verify(b"secret1"));
    }

    #[test]
    fn salt_of_the_wrong_length_is_refused() {
        let hash64 = STANDARD.encode([0u8; 64]);
        for salt_len in [0usize, 8, 11, 13, 16] {
            let salt = STANDARD.encode(vec![1u8; salt_len]);
            assert_eq!(
                PasswordHash::parse(&format!("$7$101${salt}${hash64}")),
                Err(HashError::SaltLength(salt_len)),
            );
            assert_eq!(
                PasswordHash::parse(&format!("$6${salt}${hash64}")),
                Err(HashError::SaltLength(salt_len)),
            );
        }
    }

    #[test]
    fn hash_of_the_wrong_length_is_refused() {
        let salt = STANDARD.encode([0u8; 12]);
        for hash_len in [0usize, 32, 63, 65] {
            let hash = STANDARD.encode(vec![1u8; hash_len]);
            assert_eq!(
                PasswordHash::parse(&format!("$7$101${salt}${hash}")),
                Err(HashError::HashLength(hash_len)),
            );
            assert_eq!(
                PasswordHash::parse(&format!("$6${salt}${hash}")),
                Err(HashError::HashLength(hash_len)),
            );
        }
    }

    #[test]
    fn unpadded_or_non_standard_base64_is_refused() {
        let unpadded = ALICE.trim_end_matches('=');
        assert_eq!(
            PasswordHash::parse(unpadded),
            Err(HashError::Base64 { field: "hash" })
        );
        let url_safe = ALICE.replace('/', "_").replace('+', "-");
        assert!(PasswordHash::parse(&url_safe).is_err());
        let bad_salt = ALICE.replace("qKSz0fyQacdTZ9HB", "qKSz0fyQacdTZ9H!");
        assert_eq!(
            PasswordHash::parse(&bad_salt),
            Err(HashError::Base64 { field: "salt" })
        );
    }

    #[test]
    fn garbage_is_refused() {
        for garbage in [
            "",
            "secret1",
            "$",
            "$$",
            "$6$",
            "$6$abc",
            "$7$",
            "$7$101$",
            "$7$101$qKSz0fyQacdTZ9HB$",
            "$5$rounds=5000$abc$def",
            "$1$abc$def",
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            "$argon2id$garbage",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
        ] {
            assert!(
                PasswordHash::parse(garbage).is_err(),
                "{garbage:?} must be refused"
            );
        }
    }

    #[test]
    fn extra_fields_are_refused() {
        assert_eq!(
            PasswordHash::parse(&format!("{ALICE}$")),
            Err(HashError::Fields { format: "$7$" })
        );
        let six = sha512_entry(b"pw", &[7; 12]);
        assert_eq!(
            PasswordHash::parse(&format!("{six}$x")),
            Err(HashError::Fields { format: "$6$" })
        );
    }

    #[test]
    fn iterations_must_be_a_positive_integer() {
        for iterations in ["0", "-1", "+5", "abc", "1e3", " 101", "99999999999"] {
            let s = ALICE.replacen("101", iterations, 1);
            assert_eq!(
                PasswordHash::parse(&s),
                Err(HashError::Iterations),
                "{iterations:?}"
            );
        }
    }

    #[test]
    fn argon2id_hashes_verify() {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let phc = argon.hash_password(b"secret1", &salt).unwrap().to_string();
        let hash = PasswordHash::parse(&phc).unwrap();
        assert!(matches!(hash, PasswordHash::Argon2id(_)));
        assert!(hash.verify(b"secret1"));
        assert!(!hash.verify(b"secret2"));
        assert_eq!(hash.to_string(), phc);
    }

    #[test]
    fn debug_output_does_not_show_the_hash() {
        let shown = format!("{:?}", PasswordHash::parse(ALICE).unwrap());
        assert!(!shown.contains("qKSz"), "{shown}");
    }

    #[test]
    fn password_file_keeps_good_lines_in_order() {
        let bob = hash_password_with_salt(b"pw", &[2; 12], 101);
        let text = format!("# users\nalice:{ALICE}\n\nbob:{bob}\r\n");
        let users = parse_password_file(&text);
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(users[0].1.verify(b"secret1"));
        assert!(users[1].1.verify(b"pw"));
    }

    #[test]
    fn password_file_reports_skipped_lines_with_their_numbers() {
        let text = format!(
            "# comment\nno-colon-here\nalice:{ALICE}\nmallory:$7$101$short$short\n:{ALICE}\nalice:{ALICE}\neve:plaintext\n"
        );
        let (users, skipped) = parse_password_file_with_skipped(&text);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].0, "alice");
        let lines: Vec<usize> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 4, 5, 6, 7]);
        assert_eq!(skipped[1].username.as_deref(), Some("mallory"));
        assert!(
            skipped[3].reason.contains("duplicate"),
            "{}",
            skipped[3].reason
        );
        assert!(
            skipped[4].reason.contains("unknown"),
            "{}",
            skipped[4].reason
        );
    }

    #[test]
    fn password_file_trims_blanks_around_fields() {
        let users = parse_password_file(&format!("  alice \t: {ALICE}  \n"));
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].0, "alice");
    }

    #[test]
    fn empty_password_file_has_no_users() {
        assert!(parse_password_file("").is_empty());
        assert!(parse_password_file("# only a comment\n").is_empty());
    }
}
