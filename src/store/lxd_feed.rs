//! The observed state's feed: full listings of LXD, and lifecycle events turned into what
//! the cache learns (one GET of the object, only when a managed resource cares and the
//! event is not the echo of the controller's own write).
//!
//! It reads LXD and never writes to it; it returns the keys an event affects and leaves
//! enqueueing them to the caller.

use std::sync::Arc;

use crate::lxd::{LifecycleAction, LifecycleEvent, LxdApi, LxdError};
use crate::resource::{ProfileNames, ResourceKey};

use super::{Object, Relisting, Store};

/// What an event or a listing asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Affected {
    /// These Machines and Containers may have drifted.
    pub keys: Vec<ResourceKey>,
    /// Everything may have changed (a relisting): look at every resource and collect.
    pub everything: bool,
}

impl Affected {
    fn keys(keys: Vec<ResourceKey>) -> Affected {
        Affected {
            keys,
            everything: false,
        }
    }

    fn everything() -> Affected {
        Affected {
            keys: Vec::new(),
            everything: true,
        }
    }
}

/// Lists LXD into the store and follows its events.
pub struct LxdFeed<L: LxdApi> {
    lxd: L,
    store: Arc<Store>,
    names: ProfileNames,
}

impl<L: LxdApi> LxdFeed<L> {
    pub fn new(lxd: L, store: Arc<Store>, names: ProfileNames) -> LxdFeed<L> {
        LxdFeed { lxd, store, names }
    }

    /// Lists LXD (two requests whatever the fleet's size) into the cache, one object at a
    /// time as each is read (`Observed::list_instance`): at no time is a fleet's listing
    /// held whole beside the cache. The instances first, then the profiles, whose users
    /// are judged against the instances just listed. A listing that fails leaves what it
    /// merged so far (each object as LXD showed it) and removes nothing.
    pub async fn relist(&self) -> Result<(), LxdError> {
        let store = &self.store;
        let mut relisting = Relisting::like(&store.observed());
        self.lxd
            .each_instance(|i| store.observed_mut().list_instance(i, &mut relisting))
            .await?;
        store.observed_mut().instances_listed(&mut relisting);
        self.lxd
            .each_profile(|p| store.observed_mut().list_profile(p, &mut relisting))
            .await?;
        store.observed_mut().profiles_listed(relisting);
        Ok(())
    }

    /// After a (re)connect of the events stream: events may have been lost, so list
    /// again; everything is to be looked at.
    pub async fn reconnected(&self) -> Result<Affected, LxdError> {
        self.relist().await?;
        self.store.observed_mut().forget_echoes();
        Ok(Affected::everything())
    }

    /// One lifecycle event: what the cache learns, and the resources it affects.
    pub async fn on_event(&self, event: &LifecycleEvent) -> Result<Affected, LxdError> {
        let name = event.name.as_str();
        let store = &self.store;
        let affected = match &event.action {
            LifecycleAction::InstanceCreated | LifecycleAction::InstanceUpdated => {
                // The echo first: our own write's event costs no look at the resources.
                let echo = store
                    .observed_mut()
                    .take_echo(&Object::Instance(name.into()), event.received);
                let keys = if echo {
                    Vec::new()
                } else {
                    store.desired().keys_for_instance(name)
                };
                if keys.is_empty() {
                    return Ok(Affected::default());
                }
                match self.lxd.get_instance(name).await {
                    Ok((i, _)) => store.observed_mut().put_instance(&i),
                    Err(LxdError::NotFound { .. }) => store.observed_mut().remove_instance(name),
                    Err(e) => return Err(e),
                }
                Affected::keys(keys)
            }
            LifecycleAction::InstanceDeleted => {
                store.observed_mut().remove_instance(name);
                Affected::keys(store.desired().keys_for_instance(name))
            }
            LifecycleAction::ProfileCreated | LifecycleAction::ProfileUpdated => {
                // The echo first: the users of a profile can be the whole fleet.
                let echo = store
                    .observed_mut()
                    .take_echo(&Object::Profile(name.into()), event.received);
                let keys = if echo {
                    Vec::new()
                } else {
                    store.desired().keys_for_profile(name, &self.names)
                };
                if keys.is_empty() {
                    return Ok(Affected::default());
                }
                match self.lxd.get_profile(name).await {
                    Ok((p, _)) => store.observed_mut().put_lxd_profile(p),
                    Err(LxdError::NotFound { .. }) => store.observed_mut().remove_profile(name),
                    Err(e) => return Err(e),
                }
                Affected::keys(keys)
            }
            LifecycleAction::ProfileDeleted => {
                let echo = {
                    let mut o = store.observed_mut();
                    let echo = o.take_echo(&Object::Profile(name.into()), event.received);
                    o.remove_profile(name);
                    echo
                };
                if echo {
                    Affected::default()
                } else {
                    Affected::keys(store.desired().keys_for_profile(name, &self.names))
                }
            }
            LifecycleAction::InstanceRenamed | LifecycleAction::ProfileRenamed => {
                // The event names one side only: a listing settles both.
                return self.reconnected().await;
            }
            LifecycleAction::Other(_) => Affected::default(),
        };
        Ok(affected)
    }
}
