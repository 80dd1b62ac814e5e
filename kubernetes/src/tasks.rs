//! The state of the background issuers the controller's Context holds (ACME tasks and
//! fleet provisioning jobs), apart from the drivers that use them (`acme`, `fleet`),
//! so the Context does not depend on its users.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use edgemq::api::Certificate;
use edgemq::certs::awsiot_jobs::Job;
use edgemq::certs::fleet::{FleetIdentity, Record};
use edgemq::certs::renewal::Tasks;

/// The ACME tasks of the controller, and the channel they wake reconciles with.
pub struct Issuers {
    pub(super) tasks: Tasks,
    pub(super) wake: mpsc::UnboundedSender<ObjectRef<Certificate>>,
}

impl Issuers {
    /// Issuers that wake reconciles through `wake`.
    pub fn new(wake: mpsc::UnboundedSender<ObjectRef<Certificate>>) -> Issuers {
        Issuers {
            tasks: Tasks::default(),
            wake,
        }
    }
}

/// A provisioned identity whose Secret is not written yet.
pub(super) struct Unsaved {
    pub(super) record: Record,
    pub(super) identity: FleetIdentity,
    pub(super) ca_pem: String,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) jobs: BTreeMap<String, Job>,
    pub(super) unsaved: BTreeMap<String, Unsaved>,
}

/// The fleet provisioning tasks of the controller, and the channel they wake
/// reconciles with.
pub struct Provisioners {
    inner: Mutex<Inner>,
    pub(super) wake: mpsc::UnboundedSender<ObjectRef<Certificate>>,
}

impl Provisioners {
    /// Provisioners that wake reconciles through `wake`.
    pub fn new(wake: mpsc::UnboundedSender<ObjectRef<Certificate>>) -> Provisioners {
        Provisioners {
            inner: Mutex::default(),
            wake,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
