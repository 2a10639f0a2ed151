//! Exact sliding-window budgets for one upstream mailbox: `rate` messages per period and
//! `daily_recipients` per rolling 24 h. Unlike a token bucket, no window of the period's
//! length ever holds more than the budget, which is what Exchange counts.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct SlidingWindow {
    budget: u64,
    period: Duration,
    /// (time, weight) of the spends still inside the window.
    spent: Mutex<VecDeque<(Instant, u64)>>,
}

impl SlidingWindow {
    pub fn new(budget: u64, period: Duration) -> SlidingWindow {
        SlidingWindow {
            budget: budget.max(1),
            period,
            spent: Mutex::new(VecDeque::new()),
        }
    }

    /// Spends `weight` now if the window has room; otherwise says when it will.
    pub fn try_spend(&self, weight: u64) -> Result<(), Instant> {
        let now = Instant::now();
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        while spent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.period)
        {
            spent.pop_front();
        }
        let used: u64 = spent.iter().map(|(_, w)| w).sum();
        // A single spend larger than the whole budget is allowed into an empty window, or it
        // could never go at all.
        if used + weight <= self.budget || used == 0 {
            spent.push_back((now, weight));
            return Ok(());
        }
        // Room appears when enough of the oldest spends have aged out.
        let mut freed = 0;
        for (at, w) in spent.iter() {
            freed += w;
            if used - freed + weight <= self.budget {
                return Err(*at + self.period);
            }
        }
        Err(spent.back().map_or(now, |(at, _)| *at + self.period))
    }

    /// Waits until `weight` can be spent, then spends it.
    pub async fn spend(&self, weight: u64) {
        while let Err(at) = self.try_spend(weight) {
            tokio::time::sleep_until(at).await;
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
        for _ in 0..100 {
            window.spend(1).await;
            times.push(Instant::now() - start);
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(60))
                .count();
            assert!(in_window <= 30, "{in_window} sends within 60 s from {t:?}");
        }
        // And it is not slower than it must be: 100 messages in 3 windows.
        assert_eq!(times[99], Duration::from_secs(180));
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_spends() {
        let window = SlidingWindow::new(10, Duration::from_secs(100));
        assert!(window.try_spend(6).is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(window.try_spend(3).is_ok());
        let start = Instant::now();
        assert_eq!(window.try_spend(5), Err(start + Duration::from_secs(90)));
        assert!(window.try_spend(1).is_ok());
    }
}
