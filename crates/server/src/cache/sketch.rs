//! Finding hot keys in little memory: a count-min sketch of L1 misses (4 rows of 16,384 one-byte
//! counters, 64 KiB) that halves every counter after each window of 32,768 misses, so a key is
//! "hot" when it missed about `threshold` times recently, whatever it did long ago. A key that
//! becomes hot is reported once per window, and the most recent hot keys are kept (bounded) so
//! an instance can save them at shutdown and warm them at its next start.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;

use parking_lot::Mutex;

const ROWS: usize = 4;
/// Wide enough that 10,000 keys missed once make no false "hot" at threshold 4 (4,096 made 48).
const WIDTH: usize = 16_384;
/// Misses counted before every counter is halved.
const WINDOW: u32 = 32_768;
/// Hot keys remembered for the next start.
const MAX_HOT: usize = 10_000;

pub struct Sketch {
    threshold: u8,
    state: Mutex<State>,
    hasher: foldhash::fast::FixedState,
}

struct State {
    counters: Box<[[u8; WIDTH]; ROWS]>,
    counted: u32,
    hot: VecDeque<String>,
    hot_set: HashSet<String>,
}

impl Sketch {
    /// A sketch that calls a key hot at its `threshold`-th recent miss (at least 1, at most 255).
    pub fn new(threshold: u32) -> Sketch {
        Sketch {
            threshold: threshold.clamp(1, 255) as u8,
            state: Mutex::new(State {
                counters: Box::new([[0; WIDTH]; ROWS]),
                counted: 0,
                hot: VecDeque::new(),
                hot_set: HashSet::new(),
            }),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
        }
    }

    /// Counts a miss of `key`; true when this miss made it hot.
    pub fn missed(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        let mut state = self.state.lock();
        let mut estimate = u8::MAX;
        for row in 0..ROWS {
            let slot = ((hash >> (row * 16)) as usize) & (WIDTH - 1);
            let counter = &mut state.counters[row][slot];
            *counter = counter.saturating_add(1);
            estimate = estimate.min(*counter);
        }
        state.counted += 1;
        if state.counted >= WINDOW {
            state.counted = 0;
            for row in state.counters.iter_mut() {
                row.iter_mut().for_each(|c| *c /= 2);
            }
        }
        let hot = estimate == self.threshold;
        if hot && state.hot_set.insert(key.to_string()) {
            state.hot.push_back(key.to_string());
            if state.hot.len() > MAX_HOT
                && let Some(oldest) = state.hot.pop_front()
            {
                state.hot_set.remove(&oldest);
            }
        }
        hot
    }

    /// The hot keys seen lately, the most recent last.
    pub fn hot_keys(&self) -> Vec<String> {
        self.state.lock().hot.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_hot_at_its_threshold_once() {
        let sketch = Sketch::new(3);
        assert!(!sketch.missed("a") && !sketch.missed("a"));
        assert!(sketch.missed("a"), "the third miss makes it hot");
        assert!(!sketch.missed("a"), "and it is reported once");
        assert!(!sketch.missed("b"), "another key has its own count");
        assert_eq!(sketch.hot_keys(), vec!["a".to_string()]);
    }

    #[test]
    fn old_misses_fade() {
        let sketch = Sketch::new(3);
        sketch.missed("old");
        sketch.missed("old");
        // A window of misses of another key halves the counts: two old misses become one.
        for _ in 0..WINDOW {
            sketch.missed("noise");
        }
        assert!(
            !sketch.missed("old"),
            "two faded misses and a new one are not three"
        );
    }

    #[test]
    fn rare_keys_stay_cold_among_many() {
        let sketch = Sketch::new(4);
        let hot = (0..10_000)
            .filter(|n| sketch.missed(&format!("k{n}")))
            .count();
        assert!(hot < 10, "{hot} of 10,000 keys missed once were called hot");
    }
}
