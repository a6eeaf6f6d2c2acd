//! The NAT bindings the fuzzer has seen the program make: which reply
//! tuple (server → SNAT address and NAT port) belongs to which client and
//! VIP. Built only from observed client-side rewrites; a reply the program
//! forwards must match one of these.
use std::{collections::HashMap, net::SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub server: SocketAddr,
    /// SNAT address and NAT port.
    pub nat: SocketAddr,
    pub proto: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub vip: SocketAddr,
    pub client: SocketAddr,
}

#[derive(Default)]
pub struct Model {
    replies: HashMap<ReplyKey, Binding>,
    /// The keys in insertion order, to pick one at random.
    keys: Vec<ReplyKey>,
}

impl Model {
    /// Records (or replaces: a NAT port taken over) a binding.
    pub fn bind(&mut self, key: ReplyKey, binding: Binding) {
        if self.replies.insert(key, binding).is_none() {
            self.keys.push(key);
        }
    }

    pub fn binding(&self, key: &ReplyKey) -> Option<Binding> {
        self.replies.get(key).copied()
    }

    /// The `index`-th binding (modulo their number), if any.
    pub fn nth(&self, index: usize) -> Option<(ReplyKey, Binding)> {
        let key = *self.keys.get(index % self.keys.len().max(1))?;
        Some((key, self.replies[&key]))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
