//! Each signed request of a machine is accepted once (docs/PROTOCOL.md, "Signed requests"): its
//! counter must be above every counter accepted from the machine before, or one of the last
//! [`RECENT`] below the highest that has not been seen, since requests an agent sends at once (a
//! long poll and a job's progress) may arrive out of order. The highest accepted counter is
//! stored: with every request that changes something, before the change is written, and for the
//! rest in the background with the last-seen times, so a restart keeps refusing what was seen.

use std::collections::BTreeSet;

/// How many accepted counters below the highest are remembered.
pub const RECENT: usize = 64;

/// The counters of one machine.
#[derive(Debug, Default)]
pub struct Window {
    /// Every counter at or below this is refused.
    floor: u64,
    /// Accepted counters above `floor` (at most [`RECENT`]).
    recent: BTreeSet<u64>,
}

/// Why a counter was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "request counter {counter} was accepted before: a replayed request (each signed request \
         is accepted once)"
    )]
    Seen { counter: u64 },
    #[error(
        "request counter {counter} is below {floor}, the oldest this server still takes from \
         this machine: a replayed request, or one overtaken by many newer ones"
    )]
    Old { counter: u64, floor: u64 },
}

impl Window {
    /// A window that refuses everything up to `floor` (the highest counter stored).
    pub fn from_stored(floor: u64) -> Self {
        Self {
            floor,
            recent: BTreeSet::new(),
        }
    }

    /// Takes `counter` once.
    pub fn accept(&mut self, counter: u64) -> Result<(), Refused> {
        if counter <= self.floor {
            return Err(Refused::Old {
                counter,
                floor: self.floor.saturating_add(1),
            });
        }
        if !self.recent.insert(counter) {
            return Err(Refused::Seen { counter });
        }
        while self.recent.len() > RECENT {
            if let Some(lowest) = self.recent.pop_first() {
                self.floor = lowest;
            }
        }
        Ok(())
    }

    /// The highest counter accepted (or stored).
    pub fn highest(&self) -> u64 {
        self.recent.last().copied().unwrap_or(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_taken_once_and_late_ones_within_the_window() {
        let mut w = Window::default();
        w.accept(10).unwrap();
        assert_eq!(w.accept(10), Err(Refused::Seen { counter: 10 }));
        w.accept(12).unwrap();
        // sent before 12, arrived after it
        w.accept(11).unwrap();
        assert_eq!(w.accept(11), Err(Refused::Seen { counter: 11 }));
        assert_eq!(w.highest(), 12);
        for c in 100..(100 + RECENT as u64) {
            w.accept(c).unwrap();
        }
        // 10, 11 and 12 fell out of the window: refused as old, never accepted again
        for c in [10, 11, 12] {
            assert!(matches!(w.accept(c), Err(Refused::Old { .. })), "{c}");
        }
        // 13 was never seen and is above the floor: a late request is still taken, once
        w.accept(13).unwrap();
        assert!(w.accept(13).is_err());
        assert_eq!(w.accept(163), Err(Refused::Seen { counter: 163 }));
        assert_eq!(w.highest(), 100 + RECENT as u64 - 1);
    }

    #[test]
    fn a_stored_floor_refuses_everything_up_to_it() {
        let mut w = Window::from_stored(500);
        assert_eq!(w.highest(), 500);
        assert_eq!(
            w.accept(500),
            Err(Refused::Old {
                counter: 500,
                floor: 501
            })
        );
        assert!(w.accept(1).is_err());
        w.accept(501).unwrap();
        let e = Window::from_stored(500).accept(7).unwrap_err().to_string();
        assert!(e.contains("replayed"), "{e}");
    }
}
