//! One retry policy for everything that reads from a remote: how many tries or how long, the
//! pause between them (doubling from a first pause up to a cap, or what the server asked for,
//! within that cap), which failures may pass if tried again, and a hook that sees every retry
//! (to count them).
//!
//! A [`Policy`] is plain settings; each operation gets its own [`Attempts`] from it, tells it
//! of each failure, and is handed back the pause to take before the next try, or the number of
//! tries made once it should give up. What it guarantees: a loop driven by it ends — after
//! the policy's number of tries, or once the next pause would end past its deadline — and the
//! pauses never exceed the cap, whatever a server asks.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most doublings of the first pause: past this the cap holds anyway, and the factor stays
/// far from overflowing.
const MAX_DOUBLINGS: u32 = 16;

/// How often and how patiently a failed operation is tried again.
#[derive(Clone)]
pub(crate) struct Policy {
    /// Tries in all, the first included; `None`: as many as the deadline allows.
    tries: Option<u32>,
    /// No pause starts that would end later than this after the first try.
    deadline: Option<Duration>,
    /// The pause after the first failure; each next one doubles, up to `max_delay`.
    first_delay: Duration,
    /// Longest pause between two tries, whatever a server asks for.
    max_delay: Duration,
    /// Sees every retry before its pause.
    on_retry: Option<Hook>,
}

/// What [`Policy::on_retry`] keeps.
type Hook = Arc<dyn Fn(&Retrying) + Send + Sync>;

/// A retry about to happen, as a [`Policy::on_retry`] hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retrying {
    /// Failures in a row so far, the one just counted included.
    pub failures: u32,
    /// The pause before the next try.
    pub pause: Duration,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("tries", &self.tries)
            .field("deadline", &self.deadline)
            .field("first_delay", &self.first_delay)
            .field("max_delay", &self.max_delay)
            .field("on_retry", &self.on_retry.is_some())
            .finish()
    }
}

impl Policy {
    /// `tries` tries in all, the first included, with pauses doubling from `first_delay` up
    /// to `max_delay`.
    pub(crate) fn tries(tries: u32, first_delay: Duration, max_delay: Duration) -> Policy {
        Policy {
            tries: Some(tries),
            deadline: None,
            first_delay,
            max_delay,
            on_retry: None,
        }
    }

    /// As many tries as fit in `deadline` from the first: no pause starts that would end past
    /// it. Pauses double from `first_delay` up to `max_delay`.
    pub(crate) fn within(deadline: Duration, first_delay: Duration, max_delay: Duration) -> Policy {
        Policy {
            tries: None,
            deadline: Some(deadline),
            first_delay,
            max_delay,
            on_retry: None,
        }
    }

    /// This policy, with `hook` called before every pause (to count retries, say).
    pub(crate) fn on_retry(mut self, hook: impl Fn(&Retrying) + Send + Sync + 'static) -> Policy {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// The pause after the `failures`-th failure in a row, or what the server asked for;
    /// never more than the cap.
    pub(crate) fn delay(&self, failures: u32, asked: Option<Duration>) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(MAX_DOUBLINGS));
        asked.unwrap_or(doubled).min(self.max_delay)
    }

    /// The tries of one operation, starting now.
    pub(crate) fn start(&self) -> Attempts<'_> {
        Attempts {
            policy: self,
            started: Instant::now(),
            failures: 0,
        }
    }
}

/// The tries of one operation under a [`Policy`]: counts its failures in a row and the time
/// since it started.
#[derive(Debug)]
pub(crate) struct Attempts<'p> {
    policy: &'p Policy,
    started: Instant,
    failures: u32,
}

impl Attempts<'_> {
    /// Counts a failed try and says what follows: the pause before the next try, or, when the
    /// failure is not `transient` or the policy is spent, `Err` with the tries made (the
    /// failed one included). `asked` is the pause the server asked for (`Retry-After`).
    pub(crate) fn next(
        &mut self,
        transient: bool,
        asked: Option<Duration>,
    ) -> Result<Duration, u32> {
        self.failures = self.failures.saturating_add(1);
        if !transient || self.policy.tries.is_some_and(|t| self.failures >= t) {
            return Err(self.failures);
        }
        let pause = self.policy.delay(self.failures, asked);
        if let Some(deadline) = self.policy.deadline
            && self.started.elapsed() + pause > deadline
        {
            return Err(self.failures);
        }
        if let Some(hook) = &self.policy.on_retry {
            hook(&Retrying {
                failures: self.failures,
                pause,
            });
        }
        Ok(pause)
    }

    /// Failures in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts the count again: the operation made progress (a stream read some bytes), so
    /// only failures from now on count, and the deadline runs from now.
    pub(crate) fn progressed(&mut self) {
        self.failures = 0;
        self.started = Instant::now();
    }

    /// The time left before the deadline, zero once it passed; `None` when the policy has
    /// no deadline.
    pub(crate) fn left(&self) -> Option<Duration> {
        self.policy
            .deadline
            .map(|d| d.saturating_sub(self.started.elapsed()))
    }
}

/// Whether an HTTP status may pass if asked again: the server is busy, restarting or
/// throttling.
pub(crate) fn transient_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// Whether an I/O error is a connection that dropped or stalled (worth another try), rather
/// than one that could not be made.
pub(crate) fn dropped(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn backs_off() {
        let policy = Policy::tries(5, SECOND, 8 * SECOND);
        let delays: Vec<u64> = (1..5).map(|n| policy.delay(n, None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(policy.delay(30, None), 8 * SECOND);
        assert_eq!(policy.delay(u32::MAX, None), 8 * SECOND);
        assert_eq!(policy.delay(1, Some(3600 * SECOND)), 8 * SECOND);
        assert_eq!(policy.delay(3, Some(2 * SECOND)), 2 * SECOND);
        assert!(transient_status(503) && transient_status(429));
        assert!(!transient_status(404) && !transient_status(401));
        assert!(dropped(io::ErrorKind::ConnectionReset));
        assert!(!dropped(io::ErrorKind::ConnectionRefused));
    }

    #[test]
    fn counts_tries() {
        let policy = Policy::tries(3, SECOND, 8 * SECOND);
        let mut attempts = policy.start();
        assert_eq!(attempts.next(true, None), Ok(SECOND));
        assert_eq!(attempts.next(true, Some(5 * SECOND)), Ok(5 * SECOND));
        assert_eq!(attempts.next(true, None), Err(3));
        let mut attempts = policy.start();
        assert_eq!(attempts.next(false, None), Err(1));
        let mut attempts = policy.start();
        attempts.next(true, None).unwrap();
        attempts.next(true, None).unwrap();
        attempts.progressed();
        assert_eq!(attempts.failures(), 0);
        assert_eq!(attempts.next(true, None), Ok(SECOND));
        assert_eq!(attempts.left(), None);
    }

    #[test]
    fn keeps_the_deadline() {
        let policy = Policy::within(
            Duration::from_millis(1000),
            Duration::from_millis(200),
            Duration::from_millis(400),
        );
        let mut attempts = policy.start();
        // Pauses of 200 and 400 ms end within the second.
        assert_eq!(attempts.next(true, None), Ok(Duration::from_millis(200)));
        assert_eq!(attempts.next(true, None), Ok(Duration::from_millis(400)));
        assert!(
            attempts
                .left()
                .is_some_and(|l| l <= Duration::from_millis(1000))
        );
        let past = Policy::within(Duration::ZERO, SECOND, SECOND);
        assert_eq!(past.start().next(true, None), Err(1));
        assert_eq!(past.start().left(), Some(Duration::ZERO));
    }

    #[test]
    fn tells_the_hook() {
        let seen = Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        let policy = Policy::tries(3, Duration::ZERO, Duration::ZERO).on_retry(move |r| {
            counter.fetch_add(1, Ordering::Relaxed);
            assert_eq!(r.pause, Duration::ZERO);
        });
        let mut attempts = policy.start();
        while attempts.next(true, None).is_ok() {}
        assert_eq!(
            seen.load(Ordering::Relaxed),
            2,
            "two retries after three tries"
        );
    }
}
