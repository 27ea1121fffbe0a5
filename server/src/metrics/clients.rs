//! The busiest clients: calls and bytes per client, in a table of bounded
//! size that any number of clients cannot grow.
//!
//! A client is the name of the token it authenticated with when the server
//! has tokens, else its peer address; a hostile client can make up as many
//! of either as it likes (addresses in an IPv6 range, say). So the table
//! holds at most [`TRACKED_CLIENTS`] entries, and a client met when it is
//! full takes the place of the least busy entry, whose figures move into a
//! single "other" bucket. Figures are never lost: the entries and "other"
//! always add up to everything counted. A busy client is never pushed out
//! by a stream of newcomers (each newcomer starts at zero and is the first
//! to go), only by a client busier than it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Clients tracked by name. 64: far more than a team's builders and CI
/// runners, and a scan of 64 entries when a newcomer evicts one is cheap.
pub const TRACKED_CLIENTS: usize = 64;

/// Who made a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The name of the token the call authenticated with.
    Token(Arc<str>),
    /// The peer's address (no token, or one that was refused).
    Address(IpAddr),
    /// A call over an in-memory pipe (the CLI's embedded server).
    InProcess,
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Token(name) => write!(f, "token:{name}"),
            ClientKey::Address(ip) => write!(f, "{ip}"),
            ClientKey::InProcess => f.write_str("in-process"),
        }
    }
}

/// What one client (or the "other" bucket) has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientFigures {
    pub calls: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl ClientFigures {
    /// How busy: bytes moved either way, then calls.
    fn weight(&self) -> (u64, u64) {
        (
            self.bytes_received.saturating_add(self.bytes_sent),
            self.calls,
        )
    }

    fn absorb(&mut self, o: ClientFigures) {
        self.calls = self.calls.saturating_add(o.calls);
        self.bytes_received = self.bytes_received.saturating_add(o.bytes_received);
        self.bytes_sent = self.bytes_sent.saturating_add(o.bytes_sent);
    }
}

/// The table: at most `capacity` named clients and the "other" bucket.
#[derive(Debug)]
pub struct ClientTable {
    capacity: usize,
    entries: HashMap<ClientKey, ClientFigures>,
    other: ClientFigures,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable::with_capacity(TRACKED_CLIENTS)
    }
}

impl ClientTable {
    pub fn with_capacity(capacity: usize) -> Self {
        ClientTable {
            capacity: capacity.max(1),
            entries: HashMap::with_capacity(capacity.max(1)),
            other: ClientFigures::default(),
        }
    }

    /// Adds `figures` to `client`'s entry, making room for it if it is new.
    pub fn add(&mut self, client: &ClientKey, figures: ClientFigures) {
        if let Some(entry) = self.entries.get_mut(client) {
            entry.absorb(figures);
            return;
        }
        if self.entries.len() >= self.capacity {
            let least = self
                .entries
                .iter()
                .min_by_key(|(_, f)| f.weight())
                .map(|(k, _)| k.clone());
            if let Some(least) = least
                && let Some(evicted) = self.entries.remove(&least)
            {
                self.other.absorb(evicted);
            }
        }
        self.entries.insert(client.clone(), figures);
    }

    /// The `n` busiest clients, busiest first (ties in name order, so the
    /// order is stable), and everything else summed.
    pub fn busiest(&self, n: usize) -> (Vec<(String, ClientFigures)>, ClientFigures) {
        let mut all: Vec<(String, ClientFigures)> = self
            .entries
            .iter()
            .map(|(k, f)| (k.to_string(), *f))
            .collect();
        all.sort_by(|a, b| b.1.weight().cmp(&a.1.weight()).then(a.0.cmp(&b.0)));
        let mut rest = self.other;
        for (_, f) in all.iter().skip(n) {
            rest.absorb(*f);
        }
        all.truncate(n);
        (all, rest)
    }

    /// Entries held (the "other" bucket aside).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> ClientKey {
        ClientKey::Address(IpAddr::from(n.to_be_bytes()))
    }

    fn call(bytes: u64) -> ClientFigures {
        ClientFigures {
            calls: 1,
            bytes_received: bytes,
            bytes_sent: 0,
        }
    }

    fn total(table: &ClientTable) -> ClientFigures {
        let (listed, mut rest) = table.busiest(usize::MAX);
        for (_, f) in listed {
            rest.absorb(f);
        }
        rest
    }

    #[test]
    fn a_flood_of_made_up_clients_stays_bounded_and_loses_no_figures() {
        let mut table = ClientTable::with_capacity(8);
        let builder = ClientKey::Token("ci".into());
        table.add(&builder, call(50 << 20));
        for n in 0..100_000 {
            table.add(&ip(n), call(100));
            assert!(table.len() <= 8);
        }
        table.add(&builder, call(1 << 20));
        let sum = total(&table);
        assert_eq!(sum.calls, 100_002);
        assert_eq!(sum.bytes_received, (50 << 20) + (1 << 20) + 100_000 * 100);
        let (top, _) = table.busiest(1);
        assert_eq!(top[0].0, "token:ci", "the busy client kept its place");
        assert_eq!(top[0].1.calls, 2);
        assert_eq!(top[0].1.bytes_received, 51 << 20);
    }

    #[test]
    fn the_busiest_come_first_and_the_rest_is_summed_as_other() {
        let mut table = ClientTable::default();
        table.add(&ip(1), call(10));
        table.add(&ip(2), call(30));
        table.add(&ClientKey::InProcess, call(20));
        table.add(&ip(1), call(25));
        let (top, other) = table.busiest(2);
        let names: Vec<&str> = top.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["0.0.0.1", "0.0.0.2"]);
        assert_eq!(top[0].1.bytes_received, 35);
        assert_eq!(other.bytes_received, 20);
        assert_eq!(other.calls, 1);
    }

    #[test]
    fn client_names_carry_no_more_than_a_token_name_or_an_address() {
        assert_eq!(ClientKey::Token("ci-1".into()).to_string(), "token:ci-1");
        assert_eq!(
            ClientKey::Address("::1".parse().unwrap()).to_string(),
            "::1"
        );
        assert_eq!(ClientKey::InProcess.to_string(), "in-process");
    }
}
