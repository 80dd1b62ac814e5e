//! edgemq: secure MQTT brokers on edge machines from declarative YAML.
//!
//! The modules follow the pipeline:
//!
//! ```text
//!  api (types) ──► load (folder → typed resources, validated, file:line errors)
//!                    │
//!                    ▼
//!                  plan (pure: resources → one config bundle per Broker)
//!                    │
//!        ┌───────────┼──────────────┬──────────────┐
//!        ▼           ▼              ▼              ▼
//!     broker      certs          render        standalone
//!   (runtime)  (issuers)   (mosquitto files)  (watch + apply loop, http)
//! ```
//!
//! Dependencies point one way: `plan` knows `api` and `auth`, never a runtime.

pub mod api;
pub mod auth;
pub mod aws;
pub mod bridge;
pub mod broker;
pub mod certs;
pub mod http;
pub mod load;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod runtime;
pub mod standalone;
pub mod status;
