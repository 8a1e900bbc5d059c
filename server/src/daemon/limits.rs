//! Connection limits: how many connections are open, in total and per client IP address.
//!
//! [`ConnectionCounter::admit`] counts a new connection in, or refuses it when a limit is
//! reached; the [`Permit`] it returns counts the connection out when dropped, however the
//! connection ends. The count also tells a stopping server when the last connection is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The connections open now.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; counted out on drop.
#[derive(Debug)]
pub struct Permit {
    counter: Arc<ConnectionCounter>,
    ip: IpAddr,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from this address.
    PerIp,
}

impl ConnectionCounter {
    /// No connections.
    pub fn new() -> Arc<ConnectionCounter> {
        Arc::new(ConnectionCounter::default())
    }

    /// Counts in a connection from `ip`, unless `max_total` connections are open, or
    /// `max_per_ip` from `ip`.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refusal> {
        let ip = ip.to_canonical();
        let mut counts = self.lock();
        if counts.total >= max_total {
            return Err(Refusal::Total);
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= max_per_ip {
            return Err(Refusal::PerIp);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Permit {
            counter: self.clone(),
            ip,
        })
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every update is one step.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
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
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
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
        let first = counter.admit(a, 3, 2).expect("first");
        let _second = counter.admit(mapped, 3, 2).expect("second, same IP mapped");
        assert_eq!(counter.admit(a, 3, 2).err(), Some(Refusal::PerIp));
        let _third = counter.admit(b, 3, 2).expect("other IP");
        assert_eq!(counter.admit(b, 3, 2).err(), Some(Refusal::Total));
        assert_eq!(counter.open(), 3);
        drop(first);
        assert_eq!(counter.open(), 2);
        let _again = counter.admit(a, 3, 2).expect("room again");
    }
}
