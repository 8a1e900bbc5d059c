//! Connection limits: how many connections are open, per kind of listener and per client IP
//! address.
//!
//! Each [`Role`] (smtp, submission, submissions) has its own pool of slots, so that what port
//! 25 sees (a flood of idle connections, say) never takes the slots of the users who submit
//! on 587 and 465. Inside a pool, one client IP address may hold at most a number of them;
//! loopback and `[relay] trusted_networks` are exempt from that (the caller decides, through
//! [`PerIp`]), as Postfix exempts `$mynetworks` from its connection-count limit.
//!
//! [`ConnectionCounter::admit`] counts a new connection in, or refuses it when a limit is
//! reached; the [`Permit`] it returns counts the connection out when dropped, however the
//! connection ends. The count also tells a stopping server when the last connection is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Role;

/// The connections open now.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Open connections per pool ([`pool`]).
    total: [usize; 3],
    /// Open connections per pool and client address.
    per_ip: HashMap<(usize, IpAddr), usize>,
}

/// One admitted connection; counted out on drop.
#[derive(Debug)]
pub struct Permit {
    counter: Arc<ConnectionCounter>,
    pool: usize,
    ip: IpAddr,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from this address on this kind of listener.
    PerIp,
}

/// The per-address limit that applies to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerIp {
    /// At most this many from the address.
    AtMost(usize),
    /// None: the address is ours (loopback, trusted networks).
    Exempt,
}

impl ConnectionCounter {
    /// No connections.
    pub fn new() -> Arc<ConnectionCounter> {
        Arc::new(ConnectionCounter::default())
    }

    /// Counts in a connection from `ip` on a listener of `role`, unless `max_total`
    /// connections are open on that kind of listener, or the `per_ip` limit's number from
    /// `ip`.
    pub fn admit(
        self: &Arc<Self>,
        role: Role,
        ip: IpAddr,
        max_total: usize,
        per_ip: PerIp,
    ) -> Result<Permit, Refusal> {
        let ip = ip.to_canonical();
        let pool = pool(role);
        let mut counts = self.lock();
        if counts.total[pool] >= max_total {
            return Err(Refusal::Total);
        }
        let from_ip = counts.per_ip.entry((pool, ip)).or_insert(0);
        if let PerIp::AtMost(max) = per_ip
            && *from_ip >= max
        {
            if *from_ip == 0 {
                counts.per_ip.remove(&(pool, ip));
            }
            return Err(Refusal::PerIp);
        }
        *from_ip += 1;
        counts.total[pool] += 1;
        Ok(Permit {
            counter: self.clone(),
            pool,
            ip,
        })
    }

    /// How many connections are open, on all listeners.
    pub fn open(&self) -> usize {
        self.lock().total.iter().sum()
    }

    /// How many connections are open on `role`'s listeners.
    pub fn open_on(&self, role: Role) -> usize {
        self.lock().total[pool(role)]
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every update is one step.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A role's pool.
fn pool(role: Role) -> usize {
    match role {
        Role::Smtp => 0,
        Role::Submission => 1,
        Role::Submissions => 2,
    }
}

impl Refusal {
    /// The limit's configuration key, for logs.
    pub fn key(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counter.lock();
        counts.total[self.pool] = counts.total[self.pool].saturating_sub(1);
        let key = (self.pool, self.ip);
        if let Some(n) = counts.per_ip.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_ip() {
        let counter = ConnectionCounter::new();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let two = PerIp::AtMost(2);
        let first = counter.admit(Role::Smtp, a, 3, two).expect("first");
        let _second = counter
            .admit(Role::Smtp, mapped, 3, two)
            .expect("second, same IP mapped");
        assert_eq!(
            counter.admit(Role::Smtp, a, 3, two).err(),
            Some(Refusal::PerIp)
        );
        let _third = counter.admit(Role::Smtp, b, 3, two).expect("other IP");
        assert_eq!(
            counter.admit(Role::Smtp, b, 3, two).err(),
            Some(Refusal::Total)
        );
        assert_eq!(counter.open(), 3);
        drop(first);
        assert_eq!(counter.open(), 2);
        let _again = counter.admit(Role::Smtp, a, 3, two).expect("room again");
    }

    #[test]
    fn each_kind_of_listener_has_its_own_slots() {
        let counter = ConnectionCounter::new();
        let a: IpAddr = [192, 0, 2, 1].into();
        let one = PerIp::AtMost(1);
        let _smtp = counter.admit(Role::Smtp, a, 1, one).expect("smtp");
        assert_eq!(
            counter.admit(Role::Smtp, a, 1, PerIp::Exempt).err(),
            Some(Refusal::Total)
        );
        let _submission = counter
            .admit(Role::Submission, a, 1, one)
            .expect("port 25 full takes no submission slot, nor the address's");
        let _submissions = counter
            .admit(Role::Submissions, a, 1, one)
            .expect("nor implicit TLS's");
        assert_eq!(counter.open(), 3);
    }

    #[test]
    fn exempt_addresses_only_meet_the_total() {
        let counter = ConnectionCounter::new();
        let lo: IpAddr = [127, 0, 0, 1].into();
        let permits: Vec<Permit> = (0..5)
            .map(|_| {
                counter
                    .admit(Role::Smtp, lo, 5, PerIp::Exempt)
                    .expect("exempt")
            })
            .collect();
        assert_eq!(
            counter.admit(Role::Smtp, lo, 5, PerIp::Exempt).err(),
            Some(Refusal::Total)
        );
        assert_eq!(
            counter.admit(Role::Smtp, lo, 10, PerIp::AtMost(5)).err(),
            Some(Refusal::PerIp),
            "exempt connections still count for the address"
        );
        drop(permits);
        assert_eq!(counter.open(), 0);
        assert!(counter.lock().per_ip.is_empty(), "no entry left behind");
    }
}
