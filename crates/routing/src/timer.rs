//! A timer for deadlines that are checked often and rarely reached: a connection's request
//! deadlines, a stream's idle timeout, a client connection's head timeout.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// One timer for a sequence of deadlines. It is made the first time a deadline has to be
/// waited for, and moved only when it fires before the deadline asked for (it was set for an
/// earlier one) or when a sooner deadline is asked for: a deadline per request or per frame
/// then touches the runtime's timer wheel about once per timeout, not once per request.
#[derive(Default)]
pub struct LazyTimer(Option<Pin<Box<Sleep>>>);

impl LazyTimer {
    /// Whether the timer has been made (some deadline was waited for).
    pub fn is_armed(&self) -> bool {
        self.0.is_some()
    }

    /// Ready once `deadline` has passed; otherwise the task is woken by then.
    pub fn poll_expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_moves_the_timer_and_a_sooner_one_is_kept() {
        let mut timer = LazyTimer::default();
        assert!(!timer.is_armed());
        let start = Instant::now();
        poll_fn(|cx| timer.poll_expired(start + Duration::from_secs(1), cx)).await;
        assert!(timer.is_armed());
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        // Set for a minute away, then asked for a deadline a second away: it fires at that.
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(timer.poll_expired(far, cx).is_pending());
        poll_fn(|cx| timer.poll_expired(now + Duration::from_secs(1), cx)).await;
        assert_eq!(Instant::now() - now, Duration::from_secs(1));
    }
}
