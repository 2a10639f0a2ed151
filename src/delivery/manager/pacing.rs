//! An exact sliding-window budget for one mailbox and one limit (`rate` messages per period,
//! or `daily_recipients` per rolling 24 h). Pure: it does no I/O and takes the time as an
//! argument, so its owner ([`super::budget`]) decides about locking and persistence.
//!
//! A send is *in flight* from its reservation until it is finished, and then counts from the
//! time it finished: that is when the upstream had the message, which is what Exchange counts.
//! A new send may start when the in-flight sends plus those finished within the last period
//! fit the budget; so every window of the period's length that ends at a finished send holds
//! at most the budget. (A token bucket allows up to twice the budget in some windows.)
//!
//! Finished sends that end close together share a bucket stamped with the latest of them, so
//! a window holds at most [`BUCKETS`] entries whatever its budget, and a send is never counted
//! as older than it is: bucketing only ever makes the window stricter, by at most
//! period / [`BUCKETS`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The most finished entries a window keeps (a minute's resolution for a day).
pub const BUCKETS: u32 = 1440;

/// How soon a send blocked only by other in-flight sends looks again.
pub const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Default, Clone)]
pub struct SlidingWindow {
    /// (reservation number, weight)
    in_flight: Vec<(u64, u64)>,
    /// (finished at, weight), oldest first.
    finished: VecDeque<(Instant, u64)>,
    next_number: u64,
}

impl SlidingWindow {
    /// A window that already holds these finished sends (from a saved state).
    pub fn with_finished(mut entries: Vec<(Instant, u64)>) -> SlidingWindow {
        entries.sort_by_key(|e| e.0);
        SlidingWindow {
            finished: entries.into(),
            ..SlidingWindow::default()
        }
    }

    fn forget_expired(&mut self, period: Duration, now: Instant) {
        while self
            .finished
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= period)
        {
            self.finished.pop_front();
        }
    }

    /// What counts against the budget now: in-flight sends and those finished within `period`.
    pub fn used(&mut self, period: Duration, now: Instant) -> u64 {
        self.forget_expired(period, now);
        self.in_flight.iter().map(|e| e.1).sum::<u64>()
            + self.finished.iter().map(|e| e.1).sum::<u64>()
    }

    /// Reserves `weight` if it fits `budget` now, returning the reservation's number for
    /// [`finish`](Self::finish); otherwise when to look again.
    pub fn try_reserve(
        &mut self,
        budget: u64,
        period: Duration,
        weight: u64,
        now: Instant,
    ) -> Result<u64, Instant> {
        if let Some(later) = self.room_at(budget, period, weight, now) {
            return Err(later);
        }
        let number = self.next_number;
        self.next_number += 1;
        self.in_flight.push((number, weight));
        Ok(number)
    }

    /// When `weight` would fit `budget`: `None` for now, else when to look again.
    pub fn room_at(
        &mut self,
        budget: u64,
        period: Duration,
        weight: u64,
        now: Instant,
    ) -> Option<Instant> {
        let used = self.used(period, now);
        // One send larger than the whole budget may go into an empty window, or it never could.
        if used + weight <= budget.max(1) || used == 0 {
            return None;
        }
        // Room appears as finished sends age out, oldest first.
        let mut freed = 0;
        for (at, w) in &self.finished {
            freed += w;
            if used - freed + weight <= budget {
                return Some(*at + period);
            }
        }
        Some(now + IN_FLIGHT_POLL)
    }

    /// Gives back a reservation that was never used (another budget refused the send, or it
    /// never reached the upstream).
    pub fn cancel(&mut self, number: u64) {
        self.in_flight.retain(|e| e.0 != number);
    }

    /// The reserved send finished at `now`: from here it counts for one `period`.
    pub fn finish(&mut self, number: u64, period: Duration, now: Instant) {
        let Some(index) = self.in_flight.iter().position(|e| e.0 == number) else {
            return;
        };
        let (_, weight) = self.in_flight.swap_remove(index);
        let resolution = period / BUCKETS;
        match self.finished.back_mut() {
            // Sends finish in order; one within the resolution of the last joins its bucket,
            // which then ages out with this, its latest send.
            Some((at, w)) if now.saturating_duration_since(*at) < resolution => {
                *at = now.max(*at);
                *w += weight;
            }
            _ => self.finished.push_back((now, weight)),
        }
    }

    /// What to save: finished sends within `period`, and the in-flight ones as finishing now
    /// (one interrupted by a crash may have reached the upstream just before it).
    pub fn snapshot(&mut self, period: Duration, now: Instant) -> Vec<(Instant, u64)> {
        self.forget_expired(period, now);
        let mut entries: Vec<(Instant, u64)> = self.finished.iter().copied().collect();
        entries.extend(self.in_flight.iter().map(|(_, w)| (now, *w)));
        entries
    }

    /// Nothing in flight and nothing within `period`: the window can be dropped.
    pub fn is_idle(&mut self, period: Duration, now: Instant) -> bool {
        self.used(period, now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reserve(window: &mut SlidingWindow, budget: u64, period: Duration) -> u64 {
        loop {
            match window.try_reserve(budget, period, 1, Instant::now()) {
                Ok(number) => return number,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_budget() {
        let period = Duration::from_secs(60);
        let mut window = SlidingWindow::default();
        let start = Instant::now();
        let mut times = Vec::new();
        for i in 0..100u64 {
            let number = reserve(&mut window, 30, period).await;
            // Sends take a varying time to finish.
            tokio::time::sleep(Duration::from_millis(i % 7 * 100)).await;
            window.finish(number, period, Instant::now());
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
        let period = Duration::from_secs(10);
        let mut window = SlidingWindow::default();
        let a = window.try_reserve(2, period, 1, Instant::now()).unwrap();
        window.try_reserve(2, period, 1, Instant::now()).unwrap();
        assert_eq!(
            window.try_reserve(2, period, 1, Instant::now()).err(),
            Some(Instant::now() + IN_FLIGHT_POLL)
        );
        window.finish(a, period, Instant::now());
        let finished = Instant::now();
        assert_eq!(
            window.try_reserve(2, period, 1, Instant::now()).err(),
            Some(finished + period)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_reservations() {
        let period = Duration::from_secs(100);
        let mut window = SlidingWindow::default();
        let n = window.try_reserve(10, period, 6, Instant::now()).unwrap();
        window.finish(n, period, Instant::now());
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        let n = window.try_reserve(10, period, 3, Instant::now()).unwrap();
        window.finish(n, period, Instant::now());
        assert_eq!(
            window.try_reserve(10, period, 5, Instant::now()).err(),
            Some(start + period)
        );
        assert!(window.try_reserve(10, period, 1, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_day_of_sends_stays_bounded_and_never_ages_out_early() {
        let day = Duration::from_secs(86_400);
        let mut window = SlidingWindow::default();
        let start = Instant::now();
        // 10,000 sends spread over the day, one every 8.64 s.
        for _ in 0..10_000 {
            let n = window.try_reserve(10_000, day, 1, Instant::now()).unwrap();
            window.finish(n, day, Instant::now());
            tokio::time::advance(Duration::from_millis(8640)).await;
        }
        assert!(window.finished.len() <= BUCKETS as usize + 1);
        // Exactly a day after the first send, only it (and its bucket-mates) may have aged out.
        let used = window.used(day, start + day);
        assert!((10_000 - 7..=10_000).contains(&used), "{used}");
        assert!(window.try_reserve(10_000, day, 8, start + day).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_counts_in_flight_sends_as_finishing_now() {
        let period = Duration::from_secs(60);
        let mut window = SlidingWindow::default();
        window.try_reserve(5, period, 2, Instant::now()).unwrap();
        let saved = window.snapshot(period, Instant::now());
        assert_eq!(saved, vec![(Instant::now(), 2)]);
        let mut restored = SlidingWindow::with_finished(saved);
        assert_eq!(restored.used(period, Instant::now()), 2);
        assert!(restored.is_idle(period, Instant::now() + period));
    }
}
