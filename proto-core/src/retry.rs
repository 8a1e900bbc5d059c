//! The retry schedule of outbound delivery, as a pure function of the message's history.
//!
//! Times are whole seconds on any clock the caller chooses (the queue uses seconds since the
//! Unix epoch); the function never reads a clock and takes its randomness as an argument.
//!
//! Defaults follow Postfix (`postconf(5)`): `minimal_backoff_time = 300s`,
//! `maximal_backoff_time = 4000s`, `maximal_queue_lifetime = 5d`, with the delay doubling after
//! each failed attempt. RFC 5321 section 4.5.4.1 asks for the same shape:
//! > "the sender MUST delay retrying a particular destination after one attempt has failed.
//! > In general, the retry interval SHOULD be at least 30 minutes [...] Retries continue until
//! > the message is transmitted or the sender gives up; the give-up time generally needs to be
//! > at least 4-5 days."
//!
//! Deliberate deviation: the first retry comes after 5 minutes (as Postfix does), not 30, since
//! most temporary failures (greylisting) clear within minutes.
//!
//! Jitter spreads retries of many messages that failed together: the delay is shortened by up
//! to `jitter_fraction` of itself, never lengthened, so `max_delay` stays a true maximum.

/// How retries are spaced and when to give up.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The delay after the first failed attempt, in seconds (Postfix: 300).
    pub initial_delay: u64,
    /// Each further delay is the previous one times this (2 = doubling).
    pub multiplier: u32,
    /// The longest delay between two attempts, in seconds (Postfix: 4000).
    pub max_delay: u64,
    /// Give up once the message has been queued this long, in seconds (Postfix: 5 days).
    pub max_lifetime: u64,
    /// The largest share of a delay that jitter may remove, in `0.0..=1.0` (default 0.1).
    pub jitter_fraction: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: 300,
            multiplier: 2,
            max_delay: 4000,
            max_lifetime: 5 * 24 * 3600,
            jitter_fraction: 0.1,
        }
    }
}

/// What to do with a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Try again at this time (seconds, on the caller's clock).
    RetryAt(u64),
    /// The message is too old: fail the remaining recipients for good (and bounce).
    GiveUp,
}

/// When to try a message next.
///
/// - `now`: the current time; `first_received`: when the message was queued (same clock);
/// - `attempts_so_far`: failed attempts so far; `0` means "never tried": attempt at `now`;
/// - `jitter`: a random number in `0.0..1.0` from the caller (out-of-range values are clamped,
///   NaN counts as 0).
///
/// The delay after attempt `n` is `initial_delay * multiplier^(n-1)`, capped at `max_delay`,
/// then shortened by `jitter * jitter_fraction` of itself. Once `now` has reached
/// `first_received + max_lifetime` the answer is [`RetryDecision::GiveUp`]; a retry that would
/// fall after that moment is moved to it, so the last attempt happens at the give-up time.
pub fn next_attempt(
    now: u64,
    first_received: u64,
    attempts_so_far: u32,
    jitter: f64,
    policy: &RetryPolicy,
) -> RetryDecision {
    let deadline = first_received.saturating_add(policy.max_lifetime);
    if now >= deadline {
        return RetryDecision::GiveUp;
    }
    if attempts_so_far == 0 {
        return RetryDecision::RetryAt(now);
    }
    let delay = backoff(attempts_so_far, policy);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let fraction = policy.jitter_fraction.clamp(0.0, 1.0);
    // The cut is at most `delay`, so the subtraction cannot underflow.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cut = ((delay as f64) * fraction * jitter).floor() as u64;
    let delay = delay.saturating_sub(cut.min(delay)).max(1);
    RetryDecision::RetryAt(now.saturating_add(delay).min(deadline))
}

/// The delay before retry number `attempts` (1-based), without jitter.
fn backoff(attempts: u32, policy: &RetryPolicy) -> u64 {
    let mut delay = policy.initial_delay.min(policy.max_delay);
    for _ in 1..attempts {
        delay = delay.saturating_mul(u64::from(policy.multiplier));
        if delay >= policy.max_delay {
            return policy.max_delay;
        }
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    #[test]
    fn default_schedule_table() {
        let p = RetryPolicy::default();
        // (attempts so far, expected delay with no jitter)
        let cases: &[(u32, u64)] = &[
            (1, 300),
            (2, 600),
            (3, 1200),
            (4, 2400),
            (5, 4000),
            (6, 4000),
            (50, 4000),
            (u32::MAX, 4000),
        ];
        for &(n, want) in cases {
            let now = T0 + 3600;
            assert_eq!(
                next_attempt(now, T0, n, 0.0, &p),
                RetryDecision::RetryAt(now + want),
                "attempts_so_far={n}"
            );
        }
        assert_eq!(
            next_attempt(T0, T0, 0, 0.7, &p),
            RetryDecision::RetryAt(T0),
            "never tried: now"
        );
    }

    #[test]
    fn give_up_boundary() {
        let p = RetryPolicy::default();
        let deadline = T0 + 5 * 24 * 3600;
        // (now, expected)
        let cases: &[(u64, RetryDecision)] = &[
            (deadline - 5000, RetryDecision::RetryAt(deadline - 1000)),
            (deadline - 10, RetryDecision::RetryAt(deadline)),
            (deadline - 1, RetryDecision::RetryAt(deadline)),
            (deadline, RetryDecision::GiveUp),
            (deadline + 1, RetryDecision::GiveUp),
        ];
        for &(now, want) in cases {
            assert_eq!(
                next_attempt(now, T0, 9, 0.0, &p),
                want,
                "now=deadline{:+}",
                now as i64 - deadline as i64
            );
        }
    }

    #[test]
    fn jitter_only_shortens_within_bounds() {
        let p = RetryPolicy::default();
        for n in 1..10u32 {
            let base = match next_attempt(T0, T0, n, 0.0, &p) {
                RetryDecision::RetryAt(t) => t - T0,
                RetryDecision::GiveUp => panic!("n={n}: gave up"),
            };
            for j in [0.0, 0.25, 0.5, 0.999_999, 1.0, 7.0, -3.0, f64::NAN] {
                let RetryDecision::RetryAt(t) = next_attempt(T0, T0, n, j, &p) else {
                    panic!("n={n} jitter={j}: gave up");
                };
                let d = t - T0;
                assert!(d <= base, "n={n} jitter={j}: {d} > {base}");
                assert!(d * 10 >= base * 9, "n={n} jitter={j}: {d} < 90% of {base}");
            }
        }
    }

    #[test]
    fn custom_policy_table() {
        let p = RetryPolicy {
            initial_delay: 10,
            multiplier: 3,
            max_delay: 100,
            max_lifetime: 1000,
            jitter_fraction: 0.5,
        };
        // (now offset, attempts, jitter, expected)
        let cases: &[(u64, u32, f64, RetryDecision)] = &[
            (0, 1, 0.0, RetryDecision::RetryAt(T0 + 10)),
            (0, 2, 0.0, RetryDecision::RetryAt(T0 + 30)),
            (0, 3, 0.0, RetryDecision::RetryAt(T0 + 90)),
            (0, 4, 0.0, RetryDecision::RetryAt(T0 + 100)),
            (0, 1, 1.0, RetryDecision::RetryAt(T0 + 5)),
            (0, 4, 0.5, RetryDecision::RetryAt(T0 + 75)),
            (950, 4, 0.0, RetryDecision::RetryAt(T0 + 1000)),
            (1000, 1, 0.0, RetryDecision::GiveUp),
        ];
        for &(off, n, j, want) in cases {
            assert_eq!(
                next_attempt(T0 + off, T0, n, j, &p),
                want,
                "now=T0+{off} attempts={n} jitter={j}"
            );
        }
    }
}
