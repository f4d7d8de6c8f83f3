//! The ruleset in use and what was built for it: each farm's relay or maildir, TLS
//! configuration, DKIM signing keys, recipient directory and login cache.
//!
//! **Invariant:** a [`Snapshot`] is immutable. A reload builds a whole new one (keeping the
//! relays and directory clients whose settings did not change, with their pooled connections)
//! and the node swaps it in with one atomic store; a session keeps the snapshot current at its
//! accept to the end.

use crate::relay::Relay;
use mtac_ruleset::model::{Farm, Relay as RelayModel};
use mtac_ruleset::Ruleset;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a farm's accepted mail goes.
pub enum Delivery<'a> {
    Relay(&'a Relay),
    Maildir(&'a Path),
}

/// An immutable view of one ruleset and the relays built for it.
pub struct Snapshot {
    pub ruleset: Ruleset,
    /// Per farm (same index as the policy's farms): its relay, or a maildir.
    relays: Vec<Option<Arc<Relay>>>,
    maildirs: Vec<Option<PathBuf>>,
    /// Per farm: its TLS configuration, if it has `tls`.
    tls: Vec<Option<crate::tls::FarmTls>>,
    /// Per farm: its DKIM signing keys, if it has `dkim-sign`.
    signers: Vec<Option<crate::dkim_sign::FarmSigner>>,
    /// Per farm: its recipient directory, if it validates recipients against LDAP at run time.
    directories: Vec<Option<Arc<crate::directory::DirectoryClient>>>,
    /// Per farm: logins remembered (`auth cache=`); new, and empty, at every reload.
    login_caches: Vec<Option<crate::auth::LoginCache>>,
}

impl Snapshot {
    /// Build the snapshot, reusing what `previous` built for unchanged settings; fails when a
    /// farm's certificate or key cannot be loaded, or its directory client cannot be made.
    pub fn new(ruleset: Ruleset, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let hostname = ruleset.policy().hostname.clone();
        let mut relays = Vec::new();
        let mut maildirs = Vec::new();
        let mut tls = Vec::new();
        let mut signers = Vec::new();
        let mut directories = Vec::new();
        for farm in &ruleset.policy().farms {
            directories.push(match farm.directory.as_ref().filter(|d| d.lookups) {
                Some(settings) => {
                    // Keep the connections and caches when the directory did not change.
                    let reused = previous.and_then(|p| {
                        let (index, _) = p.farm(&farm.name)?;
                        p.directories.get(index)?.as_ref().filter(|d| d.serves(settings)).cloned()
                    });
                    match reused {
                        Some(client) => Some(client),
                        None => Some(Arc::new(
                            crate::directory::DirectoryClient::new(settings)
                                .map_err(|e| format!("farm `{}`: {e}", farm.name))?,
                        )),
                    }
                }
                None => None,
            });
            tls.push(match &farm.tls {
                Some(t) => Some(crate::tls::FarmTls::load(t).map_err(|e| format!("farm `{}`: {e}", farm.name))?),
                None => None,
            });
            signers.push(match &farm.dkim_sign {
                Some(settings) => Some(
                    crate::dkim_sign::FarmSigner::load(settings).map_err(|e| format!("farm `{}`: {e}", farm.name))?,
                ),
                None => None,
            });
            match &farm.relay {
                RelayModel::Backends(backends) => {
                    let timeout = Duration::from_secs(u64::from(farm.limits.timeouts.relay));
                    // Keep the old relay (and its pooled connections) when nothing changed.
                    let reused = previous.and_then(|p| {
                        let (index, _) = p.farm(&farm.name)?;
                        p.relays.get(index)?.as_ref().filter(|r| r.same_settings(backends, &hostname, timeout)).cloned()
                    });
                    let relay = match reused {
                        Some(relay) => relay,
                        None => Arc::new(
                            Relay::new(backends.clone(), hostname.clone(), timeout)
                                .map_err(|e| format!("farm `{}`: {e}", farm.name))?,
                        ),
                    };
                    relays.push(Some(relay));
                    maildirs.push(None);
                }
                RelayModel::Maildir(dir) => {
                    relays.push(None);
                    maildirs.push(Some(PathBuf::from(dir)));
                }
            }
        }
        let login_caches =
            ruleset.policy().farms.iter().map(|f| f.auth.as_ref().and_then(crate::auth::LoginCache::new)).collect();
        for auth in ruleset.policy().farms.iter().filter_map(|f| f.auth.as_ref()) {
            crate::auth::prepare(auth);
        }
        Ok(Snapshot { ruleset, relays, maildirs, tls, signers, directories, login_caches })
    }

    /// The login cache of the farm at `index`, if it caches.
    pub fn login_cache(&self, farm: usize) -> Option<&crate::auth::LoginCache> {
        self.login_caches.get(farm).and_then(Option::as_ref)
    }

    /// The recipient directory of the farm at `index`.
    pub fn directory(&self, farm: usize) -> Option<&Arc<crate::directory::DirectoryClient>> {
        self.directories.get(farm).and_then(Option::as_ref)
    }

    /// The TLS configuration of the farm at `index`.
    pub fn tls(&self, farm: usize) -> Option<&crate::tls::FarmTls> {
        self.tls.get(farm).and_then(Option::as_ref)
    }

    /// The DKIM signing keys of the farm at `index`.
    pub fn signer(&self, farm: usize) -> Option<&crate::dkim_sign::FarmSigner> {
        self.signers.get(farm).and_then(Option::as_ref)
    }

    /// A file the snapshot read besides the ruleset changed on disk since: a certificate or key
    /// (a renewal), a DKIM key (a rollover), a directory's bind password (a rotation), or a back
    /// end's CA file.
    pub fn files_changed(&self) -> bool {
        self.tls.iter().flatten().any(crate::tls::FarmTls::changed_on_disk)
            || self.signers.iter().flatten().any(crate::dkim_sign::FarmSigner::changed_on_disk)
            || self.directories.iter().flatten().any(|d| d.password_changed())
            || self.relays.iter().flatten().any(|r| r.changed_on_disk())
    }

    /// The farm called `name` and its index.
    pub fn farm(&self, name: &str) -> Option<(usize, &Farm)> {
        self.ruleset.policy().farms.iter().enumerate().find(|(_, f)| f.name == name)
    }

    pub fn delivery(&self, farm: usize) -> Delivery<'_> {
        match (self.relays.get(farm).and_then(Option::as_ref), self.maildirs.get(farm).and_then(Option::as_ref)) {
            (Some(relay), _) => Delivery::Relay(relay),
            (None, Some(dir)) => Delivery::Maildir(dir),
            // Every farm has one or the other (Snapshot::new); an empty maildir path fails safely with 451.
            (None, None) => Delivery::Maildir(Path::new("")),
        }
    }
}
