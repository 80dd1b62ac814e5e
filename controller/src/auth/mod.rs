//! Who may connect, and where they may publish and receive — with Mosquitto's semantics.
//!
//! ```text
//!  password file / MqttUser ──► passwd::PasswordHash ──► CONNECT: verify(password)
//!  plan::AclPlan ─────────────► acl::Acl ──────────────► PUBLISH (write), delivery (read),
//!                                                          SUBSCRIBE (some topic readable)
//!  Broker clientIdPattern ────► client_id::ClientIdPattern ► CONNECT: whose client id
//! ```
//!
//! Everything here is pure and synchronous, so the plan can use it (to hash and check
//! passwords deterministically) and the broker front end can call it on every message.
//! [`passwd_cmd`] is the `edgemq passwd` command, a drop-in for `mosquitto_passwd`.

pub mod acl;
pub mod client_id;
pub mod passwd;
pub mod passwd_cmd;

pub use acl::{topic_matches, valid_topic_filter, valid_topic_name, Acl, Op};
pub use passwd::{
    hash_password, hash_password_with_salt, parse_password_file, parse_password_file_with_skipped,
    HashError, PasswordHash, SkippedLine, DEFAULT_ITERATIONS,
};
