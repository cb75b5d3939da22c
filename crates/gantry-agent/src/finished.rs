//! Attempts this agent reported finished lately. The dispatcher cancels
//! what it sent that is no longer live (a no-op for one that finished
//! here); a cancel for an attempt this agent never had is one cancelled
//! before its assignment arrived, which must be reported ended.

use std::collections::{HashSet, VecDeque};

use super::Key;

/// How many finished attempts are remembered (the oldest are forgotten).
const KEEP: usize = 16_384;

#[derive(Default)]
pub(crate) struct Finished {
    order: VecDeque<Key>,
    keys: HashSet<Key>,
}

impl Finished {
    pub(crate) fn insert(&mut self, k: Key) {
        if self.keys.insert(k.clone()) {
            self.order.push_back(k);
            if self.order.len() > KEEP
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, k: &Key) -> bool {
        self.keys.contains(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_latest_and_forgets_the_oldest() {
        let mut f = Finished::default();
        let key = |i: u32| ("j".to_owned(), i, 1);
        for i in 0..=KEEP as u32 {
            f.insert(key(i));
        }
        assert!(!f.contains(&key(0)), "the oldest is forgotten");
        assert!(f.contains(&key(1)) && f.contains(&key(KEEP as u32)));
        assert_eq!(f.order.len(), KEEP);
    }
}
