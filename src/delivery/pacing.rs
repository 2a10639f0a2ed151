//! Exact sliding-window budgets for one upstream mailbox: `rate` messages per period and
//! `daily_recipients` per rolling 24 h.
//!
//! A send holds a [`Reservation`] while it is in flight and is stamped with the time it
//! finished. A new send may start when the in-flight sends plus those finished within the
//! last period fit the budget; so every window of the period's length that ends at a finished
//! send holds at most the budget, which is what Exchange counts. (A token bucket allows up to
//! twice the budget in some windows.)

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often a send blocked only by in-flight sends looks again.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);

pub struct SlidingWindow {
    budget: u64,
    period: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// (finished at, or `None` while in flight; weight; reservation number)
    list: VecDeque<(Option<Instant>, u64, u64)>,
    next_number: u64,
}

/// A send counted against the budget; stamped with its finishing time when dropped.
pub struct Reservation<'a> {
    window: &'a SlidingWindow,
    number: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut entries = self.window.lock();
        if let Some(entry) = entries.list.iter_mut().find(|e| e.2 == self.number) {
            entry.0 = Some(now);
        }
    }
}

impl SlidingWindow {
    pub fn new(budget: u64, period: Duration) -> SlidingWindow {
        SlidingWindow {
            budget: budget.max(1),
            period,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `weight` now if the window has room; otherwise says when to look again.
    pub fn try_reserve(&self, weight: u64) -> Result<Reservation<'_>, Instant> {
        let now = Instant::now();
        let mut entries = self.lock();
        let period = self.period;
        let expired = |e: &(Option<Instant>, u64, u64)| {
            e.0.is_some_and(|at| now.duration_since(at) >= period)
        };
        // Finished sends age out in order of finishing; drop the ones past the window.
        entries.list.retain(|e| !expired(e));
        let used: u64 = entries.list.iter().map(|e| e.1).sum();
        // One send larger than the whole budget may go into an empty window, or it never could.
        if used + weight <= self.budget || used == 0 {
            let number = entries.next_number;
            entries.next_number += 1;
            entries.list.push_back((None, weight, number));
            return Ok(Reservation {
                window: self,
                number,
            });
        }
        // Room appears as finished sends age out, oldest first.
        let mut finished: Vec<(Instant, u64)> = entries
            .list
            .iter()
            .filter_map(|e| e.0.map(|at| (at, e.1)))
            .collect();
        finished.sort();
        let mut freed = 0;
        for (at, w) in finished {
            freed += w;
            if used - freed + weight <= self.budget {
                return Err(at + period);
            }
        }
        Err(now + IN_FLIGHT_POLL)
    }

    /// Waits until `weight` fits, then reserves it.
    pub async fn reserve(&self, weight: u64) -> Reservation<'_> {
        loop {
            match self.try_reserve(weight) {
                Ok(reservation) => return reservation,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_budget() {
        let window = SlidingWindow::new(30, Duration::from_secs(60));
        let start = Instant::now();
        let mut times = Vec::new();
        for i in 0..100u64 {
            let reservation = window.reserve(1).await;
            // Sends take a varying time to finish.
            tokio::time::sleep(Duration::from_millis(i % 7 * 100)).await;
            drop(reservation);
            times.push(Instant::now() - start);
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(60))
                .count();
            assert!(in_window <= 30, "{in_window} sends within 60 s from {t:?}");
        }
        // And not slower than it must be: 100 messages in a little over 3 windows.
        assert!(times[99] < Duration::from_secs(190), "{:?}", times[99]);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_sends_count() {
        let window = SlidingWindow::new(2, Duration::from_secs(10));
        let a = window.try_reserve(1).unwrap();
        let _b = window.try_reserve(1).unwrap();
        assert!(window.try_reserve(1).is_err());
        drop(a);
        let finished = Instant::now();
        assert_eq!(
            window.try_reserve(1).err(),
            Some(finished + Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_reservations() {
        let window = SlidingWindow::new(10, Duration::from_secs(100));
        drop(window.try_reserve(6).unwrap());
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(window.try_reserve(3).unwrap());
        assert_eq!(
            window.try_reserve(5).err(),
            Some(start + Duration::from_secs(100))
        );
        assert!(window.try_reserve(1).is_ok());
    }
}
