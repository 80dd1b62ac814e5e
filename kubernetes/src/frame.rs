//! The start every reconcile shares: its duration is recorded, an object being deleted
//! is told apart, and the object's namespace is indexed and validated with this very
//! version of the object in it.

use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::index::{self, View};
use super::{Error, Timer};
use edgemq::api::{Bridge, Broker, Certificate, MqttUser};
use edgemq::load::{Held, Kind, Object};

/// One of the kinds the controller reconciles.
pub(super) trait Reconciled:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
{
    /// Its kind.
    const KIND: Kind;
    /// The copy validation reads: the spec as written, without what the controller
    /// itself writes.
    fn fresh(&self) -> Object;
}

impl Reconciled for Broker {
    const KIND: Kind = Kind::Broker;
    fn fresh(&self) -> Object {
        Object::Broker(Box::new(index::without_status(self)))
    }
}

impl Reconciled for MqttUser {
    const KIND: Kind = Kind::MqttUser;
    fn fresh(&self) -> Object {
        Object::MqttUser(Box::new(self.clone()))
    }
}

impl Reconciled for Bridge {
    const KIND: Kind = Kind::Bridge;
    fn fresh(&self) -> Object {
        Object::Bridge(Box::new(self.clone()))
    }
}

impl Reconciled for Certificate {
    const KIND: Kind = Kind::Certificate;
    fn fresh(&self) -> Object {
        Object::Certificate(Box::new(self.clone()))
    }
}

/// How a reconcile starts.
pub(super) enum Begun<'a> {
    /// The object is being deleted; the timer runs while the caller finishes it.
    Deleting(Timer<'a>),
    /// The object is live.
    Live(Frame<'a>),
}

/// A live object's reconcile: where it is, and its namespace as validation sees it.
pub(super) struct Frame<'a> {
    /// Its namespace.
    pub ns: String,
    /// Its name.
    pub name: String,
    /// Its namespace, indexed and validated with this version of the object in it.
    pub view: Arc<View>,
    kind: Kind,
    _timer: Timer<'a>,
}

impl<'a> Frame<'a> {
    /// Why this object does not run as written, if it does not.
    pub fn held(&self) -> Option<&Held> {
        self.view.held(self.kind, &self.ns, &self.name)
    }

    /// Lets go of the view once the reconcile has read what it needs of it; the
    /// reconcile stays timed while it holds the timer.
    pub fn into_timer(self) -> Timer<'a> {
        self._timer
    }
}

/// The namespace of `o`.
pub(super) fn namespace_of<K: Resource>(o: &K) -> String {
    o.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

impl Context {
    /// The start of every reconcile of `obj`: the reconcile is timed from here, and a
    /// live object gets its namespace's view (see [`Context::view`]).
    pub(super) async fn begin<K: Reconciled>(&self, obj: &K) -> Result<Begun<'_>, Error> {
        let timer = self.metrics.timer(K::KIND.as_str());
        if obj.meta().deletion_timestamp.is_some() {
            return Ok(Begun::Deleting(timer));
        }
        let ns = namespace_of(obj);
        let name = obj.name_any();
        let view = self
            .view(
                &ns,
                K::KIND,
                &name,
                index::content_version(obj),
                obj.fresh(),
            )
            .await?;
        Ok(Begun::Live(Frame {
            ns,
            name,
            view,
            kind: K::KIND,
            _timer: timer,
        }))
    }
}
