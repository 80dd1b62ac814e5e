//! edgemq: secure MQTT brokers on edge machines from declarative YAML.
//!
//! The modules follow the pipeline:
//!
//! ```text
//!  front doors:  standalone/ (a folder, watched;        kubernetes/ (watchers of the API;
//!                certificates in the state directory;   certificates in Secrets;
//!                the status file sink)                  the status subresource sink)
//!                 │                                      │
//!                 └──────────► load ◄────────────────────┘   api (types) → index, validate
//!                               │
//!                               ▼
//!                             plan (pure: resources → one config bundle per Broker)
//!                               │
//!                 ┌─────────────┼───────────────────────────┐
//!                 ▼             ▼                           ▼
//!             runtime       certs, aws                   render
//!     (Engine: broker +    (issuers behind store       (mosquitto files)
//!      bridges, shared by    traits: selfSigned, ca,
//!      `run` and the pod)    acme, awsIot; AWS's API
//!                            and topic contract)
//!
//!  status: each kind's Ready words and typed status, pure, written by both sinks
//!  process: what every long-running command shares (shutdown signals)
//!  memory: hands what malloc holds free after a burst back to the system
//! ```
//!
//! `import` is the way in from another broker: Mosquitto's files → api objects as YAML
//! (the inverse of `render`).
//!
//! Dependencies point one way: `plan` knows `api` and `auth`, never a runtime; the
//! runtime never knows which source fed it.

pub mod api;
pub mod auth;
pub mod aws;
pub mod bridge;
pub mod broker;
pub mod certs;
pub mod http;
pub mod import;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod private_fs;
pub mod process;
pub mod render;
pub mod runtime;
pub mod source;
pub mod standalone;
pub mod status;
pub mod tls;
