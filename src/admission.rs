//! Who may hold a connection: the node-wide count under `--max-connections`, and the count per
//! client address under `--max-connections-per-ip`.
//!
//! A connection takes its address's place when it is accepted, before its handshake, and gives
//! it back when it ends: a client that opens connections and never completes a handshake holds
//! its own places, not everyone's, for `--handshake-timeout` each. Loopback clients are exempt
//! unless `--limit-loopback` is given: on loopback one address speaks for many clients (a local
//! reverse proxy, a load generator). The node-wide count is of upgraded connections (so that
//! `/metrics` still answers a server at its limit); handshakes in flight are bounded by the
//! descriptors `--max-connections`' default leaves for them, and past those a client is
//! answered 503 at accept (see `accept`).
//!
//! Both counts are touched once per connection, never per message: a mutex is cheap enough.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The node's admission counts (see the module documentation).
#[derive(Debug)]
pub struct Admission {
    /// Upgraded connections across all threads.
    upgraded: AtomicUsize,
    /// `--max-connections` in force (`None`: no limit).
    limit: Option<usize>,
    /// `--max-connections-per-ip` (`None`: no limit).
    per_address_limit: Option<u32>,
    /// `--limit-loopback`: loopback clients count too.
    limit_loopback: bool,
    per_address: Mutex<HashMap<IpAddr, u32>>,
}

/// An address's place, held from accept to the connection's end; given back on drop.
#[derive(Debug)]
pub struct AddressPlace {
    admission: Arc<Admission>,
    /// `None`: the address is not counted (exempt, or no limit).
    address: Option<IpAddr>,
}

impl Admission {
    pub fn new(limit: Option<usize>, per_address_limit: Option<u32>, limit_loopback: bool) -> Self {
        Admission {
            upgraded: AtomicUsize::new(0),
            limit,
            per_address_limit,
            limit_loopback,
            per_address: Mutex::default(),
        }
    }

    /// Takes a place for a connection from `address`; `None` when the address already holds
    /// `--max-connections-per-ip` of them.
    pub fn admit_address(self: &Arc<Self>, address: IpAddr) -> Option<AddressPlace> {
        let counted = self.per_address_limit.is_some()
            && (self.limit_loopback || !address.to_canonical().is_loopback());
        if !counted {
            return Some(AddressPlace {
                admission: self.clone(),
                address: None,
            });
        }
        let limit = self.per_address_limit?;
        let mut table = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let held = table.entry(address).or_insert(0);
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(AddressPlace {
            admission: self.clone(),
            address: Some(address),
        })
    }

    /// Takes a place under `--max-connections` for an upgrade; `false` when the server is full.
    pub fn try_upgrade(&self) -> bool {
        let before = self.upgraded.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|limit| before >= limit) {
            self.upgraded.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// An upgraded connection ended.
    pub fn release_upgrade(&self) {
        self.upgraded.fetch_sub(1, Ordering::Relaxed);
    }

    /// Addresses holding a place now.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let Some(address) = self.address else {
            return;
        };
        let mut table = self
            .admission
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = table.get_mut(&address) {
            *held -= 1;
            if *held == 0 {
                table.remove(&address);
                if table.capacity() > 64 && table.len() < table.capacity() / 4 {
                    table.shrink_to_fit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_places_and_gets_them_back() {
        let admission = Arc::new(Admission::new(None, Some(2), false));
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let a = admission.admit_address(remote).unwrap();
        let b = admission.admit_address(remote).unwrap();
        assert!(admission.admit_address(remote).is_none());
        assert!(admission
            .admit_address("192.0.2.8".parse().unwrap())
            .is_some());
        drop(a);
        let c = admission.admit_address(remote).unwrap();
        drop((b, c));
        assert_eq!(
            admission.addresses(),
            0,
            "a place given back leaves no entry"
        );
    }

    #[test]
    fn loopback_is_exempt_unless_limited() {
        let exempt = Arc::new(Admission::new(None, Some(1), false));
        let places: Vec<_> = (0..10)
            .map(|_| exempt.admit_address("127.0.0.1".parse().unwrap()))
            .collect();
        assert!(places.iter().all(Option::is_some));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(exempt.admit_address(mapped).is_some());
        let limited = Arc::new(Admission::new(None, Some(1), true));
        let _one = limited.admit_address("::1".parse().unwrap()).unwrap();
        assert!(limited.admit_address("::1".parse().unwrap()).is_none());
    }

    #[test]
    fn upgrades_stop_at_the_limit() {
        let admission = Admission::new(Some(1), None, false);
        assert!(admission.try_upgrade());
        assert!(!admission.try_upgrade());
        admission.release_upgrade();
        assert!(admission.try_upgrade());
    }
}
