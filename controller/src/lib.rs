//! edgemq: secure MQTT brokers on edge machines from declarative YAML.
//!
//! The modules follow the pipeline:
//!
//! ```text
//!  sources:  standalone (a folder, watched)      kubernetes (watchers of the API)
//!                 │                                   │
//!                 └──────────► load ◄─────────────────┘   api (types) → index, validate
//!                               │
//!                               ▼
//!                             plan (pure: resources → one config bundle per Broker)
//!                               │
//!                 ┌─────────────┼───────────────────────────┐
//!                 ▼             ▼                           ▼
//!             runtime       certs, aws                   render
//!     (Engine: broker +    (issuers: selfSigned, ca,   (mosquitto files)
//!      bridges, shared by    acme, awsIot)
//!      `run` and the pod)
//!                 │
//!                 ▼
//!  status sinks: status (status.json, /status)        kubernetes::status (status subresource)
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
pub mod kubernetes;
pub mod load;
pub mod metrics;
pub mod plan;
pub mod private_fs;
pub mod render;
pub mod runtime;
pub mod source;
pub mod standalone;
pub mod status;
