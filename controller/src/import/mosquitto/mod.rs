//! `edgemq import mosquitto`: a Mosquitto 2.0 installation (`mosquitto.conf` with its
//! `include_dir` folders, password file, ACL file, certificate and key files) as
//! edgemq objects.
//!
//! [`conf`] reads and parses, [`map`] (with [`bridge`]) turns the directives into
//! objects without touching the disk, and [`import`] joins them: it reads every file
//! the configuration names before mapping, so a missing or malformed file stops the
//! import before anything is written.

pub mod acme;
pub mod bridge;
pub mod conf;
pub mod map;
pub mod objects;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::import::ImportError;

pub use objects::Imported;

/// Reads `conf` and everything it names, and maps it onto edgemq objects for a Broker
/// called `broker`.
pub fn import(conf: &Path, broker: &str) -> Result<Imported, ImportError> {
    let directives = conf::read_conf(conf)?;
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    for (path, by) in map::files_needed(&directives) {
        if let std::collections::btree_map::Entry::Vacant(e) = files.entry(path) {
            let data = conf::read_file(e.key(), Some(&by))?;
            e.insert(data);
        }
    }
    map::map(&objects::Input {
        directives: &directives,
        files: &files,
        broker,
        conf,
    })
}
