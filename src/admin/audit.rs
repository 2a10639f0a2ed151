//! The record of what operators did: each action, audited, and the last [`RECENT`] of them
//! for the page's "Recent actions".

use std::collections::VecDeque;

pub const RECENT: usize = 50;

/// One audited action.
#[derive(Debug, Clone)]
pub struct Audited {
    pub at_ms: u64,
    pub user: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

/// The last [`RECENT`] actions, newest first.
#[derive(Default)]
pub struct Recent(std::sync::Mutex<VecDeque<Audited>>);

impl Recent {
    pub fn push(&self, entry: Audited) {
        let mut recent = self.0.lock().unwrap();
        recent.push_front(entry);
        recent.truncate(RECENT);
    }

    pub fn list(&self) -> Vec<Audited> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}
