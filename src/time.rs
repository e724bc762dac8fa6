//! Event time, tumbling windows and per-partition watermarks.
//!
//! Timely time *is* event time in epoch milliseconds. Each partition keeps a [`PartitionClock`]:
//! the largest event time it has seen minus the allowed lateness. A source holds its capability
//! at the minimum of its partitions' watermarks (rounded down to a coarse grain), so the dataflow
//! frontier is the job's watermark. The lateness rule looks only at a partition's own history, so
//! which records are late never depends on timing, batching or the number of workers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Event time: milliseconds since the Unix epoch.
pub type EventTime = u64;

/// Tumbling event-time windows aligned to the epoch, `[start, end)`, plus allowed lateness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Window length in milliseconds (> 0).
    pub size_ms: u64,
    /// How far behind the largest event time of a partition its watermark trails.
    pub lateness_ms: u64,
    /// Progress granularity: capabilities move in steps of this many milliseconds so that
    /// progress traffic stays small. Always divides `size_ms`.
    pub grain_ms: u64,
    /// How long after a window's final result late records still correct it (0: never).
    pub allowed_ms: u64,
    /// Hopping windows start every `slide_ms` (equal to `size_ms` for tumbling windows).
    pub slide_ms: u64,
    /// Session windows: a key's session closes after this much event time without records.
    pub session_gap_ms: Option<u64>,
    /// A record whose event time is further than this ahead of the wall clock is malformed
    /// (`--max-future`): it never moves a watermark.
    pub max_future_ms: u64,
}

/// The latest event time accepted: 9999-12-31T23:59:59.999Z. Later times cannot be written as
/// dates, and bounding them leaves room for every window computation (see [`MAX_SPAN_MS`]).
pub const MAX_EVENT_TIME: EventTime = 253_402_300_799_999;

/// The longest window, slide, session gap, delay or allowed lateness accepted (100 years), so
/// that `MAX_EVENT_TIME` plus any of them, several times over, fits in an `EventTime`.
pub(crate) const MAX_SPAN_MS: u64 = 100 * 365 * 86_400_000;

/// The default `--max-future`: one hour, as Kafka's `log.message.timestamp.after.max.ms`.
pub(crate) const DEFAULT_MAX_FUTURE_MS: u64 = 3_600_000;

/// Why an event time was refused (see [`WindowSpec::admit`]): a short reason for counting and
/// a detail for the dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadTime {
    /// `event time in the future` or `event time out of range`.
    pub reason: &'static str,
    /// What was wrong, with the numbers.
    pub detail: String,
}

/// The ends of the windows holding one event time, in increasing order.
#[derive(Clone, Debug)]
pub struct WindowEnds {
    next: EventTime,
    step: u64,
    left: u64,
}

impl Iterator for WindowEnds {
    type Item = EventTime;
    #[inline]
    fn next(&mut self) -> Option<EventTime> {
        (self.left > 0).then(|| {
            self.left -= 1;
            let end = self.next;
            self.next = self.next.saturating_add(self.step);
            end
        })
    }
}

/// Where a record stands against its partition's watermark: the outcome of the lateness rule
/// ([`WindowSpec::classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeliness {
    /// Its windows are still open: it counts in their final results. `min_end`: the end of the
    /// first of its windows (hopping windows hold a record in several).
    OnTime {
        /// End of the earliest window the record counts in.
        min_end: EventTime,
    },
    /// Some of its windows are final but within the allowed lateness: it produces a correction
    /// of the last of those (`corrects`), and counts in the later ones still open.
    Correction {
        /// End of the earliest window the record still counts in.
        min_end: EventTime,
        /// End of the last final window it corrects.
        corrects: EventTime,
    },
    /// Every window of the record closed, plus the allowed lateness, at or before `closed`:
    /// dead-lettered.
    Late {
        /// End of the record's last window.
        end: EventTime,
        /// The watermark it was held against.
        closed: EventTime,
    },
}

impl WindowSpec {
    /// A spec from durations; the grain is the largest of 1 s, 100 ms, 10 ms, 1 ms that divides
    /// the window length.
    pub fn new(size: Duration, lateness: Duration) -> anyhow::Result<Self> {
        let size_ms = span_ms(size, "--window")?;
        anyhow::ensure!(size_ms > 0, "--window must be at least 1ms");
        let lateness_ms = span_ms(lateness, "--max-delay")?;
        let grain_ms = [1000, 100, 10, 1]
            .into_iter()
            .find(|g| size_ms % g == 0)
            .unwrap_or(1);
        Ok(Self {
            size_ms,
            lateness_ms,
            grain_ms,
            allowed_ms: 0,
            slide_ms: size_ms,
            session_gap_ms: None,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
        })
    }

    /// The same spec with another `--max-future` bound.
    pub fn with_max_future(mut self, max_future: Duration) -> anyhow::Result<Self> {
        self.max_future_ms = span_ms(max_future, "--max-future")?;
        Ok(self)
    }

    /// What must match for a checkpoint to be resumed: everything but `--max-future`, which
    /// only decides about records not yet read.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:?}",
            WindowSpec {
                max_future_ms: 0,
                ..*self
            }
        )
    }

    /// Checks that a record's event time can be used, `now` being the wall clock: not more than
    /// `max_future_ms` ahead of it (a producer writing µs instead of ms, a broken clock) and not
    /// past [`MAX_EVENT_TIME`]. Such a time is malformed: it is dead-lettered and never moves a
    /// watermark. Every later computation on an admitted time fits in an `EventTime`.
    pub fn admit(&self, t: EventTime, now: EventTime) -> Result<(), BadTime> {
        let horizon = now.saturating_add(self.max_future_ms);
        if t > horizon {
            return Err(BadTime {
                reason: "event time in the future",
                detail: format!(
                    "event time {t} is {} ahead of the wall clock (at most {} allowed by --max-future)",
                    humantime::format_duration(Duration::from_millis(t - now)),
                    humantime::format_duration(Duration::from_millis(self.max_future_ms)),
                ),
            });
        }
        if t > MAX_EVENT_TIME {
            return Err(BadTime {
                reason: "event time out of range",
                detail: format!("event time {t} is after the year 9999"),
            });
        }
        Ok(())
    }

    /// Hopping windows: a window of `size_ms` starts every `slide` (which must divide the size).
    pub fn with_slide(mut self, slide: Duration) -> anyhow::Result<Self> {
        let slide_ms = span_ms(slide, "--slide")?;
        anyhow::ensure!(
            slide_ms > 0 && slide_ms <= self.size_ms && self.size_ms.is_multiple_of(slide_ms),
            "--slide must be positive and divide --window (got {slide_ms} ms for a {} ms window)",
            self.size_ms
        );
        self.slide_ms = slide_ms;
        self.grain_ms = [1000, 100, 10, 1]
            .into_iter()
            .find(|g| slide_ms % g == 0)
            .unwrap_or(1);
        Ok(self)
    }

    /// Session windows closing after `gap` without records for a key.
    pub fn with_session_gap(mut self, gap: Duration) -> anyhow::Result<Self> {
        let gap_ms = span_ms(gap, "--session-gap")?;
        anyhow::ensure!(gap_ms > 0, "--session-gap must be positive");
        self.session_gap_ms = Some(gap_ms);
        self.grain_ms = [1000, 100, 10, 1]
            .into_iter()
            .find(|g| gap_ms % g == 0)
            .unwrap_or(1);
        Ok(self)
    }

    /// Ends of every window holding `t`, in increasing order (one for tumbling windows; for
    /// sessions, the earliest end of the session `t` opens or extends: `t + gap`).
    pub fn window_ends(&self, t: EventTime) -> WindowEnds {
        if let Some(gap) = self.session_gap_ms {
            return WindowEnds {
                next: t.saturating_add(gap),
                step: 0,
                left: 1,
            };
        }
        let last = t / self.slide_ms;
        let first = if t >= self.size_ms {
            (t - self.size_ms) / self.slide_ms + 1
        } else {
            0
        };
        let (slide, size) = (self.slide_ms, self.size_ms);
        WindowEnds {
            next: first * slide + size,
            step: slide,
            left: last + 1 - first,
        }
    }

    /// The same spec with corrections allowed for `allowed` after a window's final result.
    pub fn with_allowed_lateness(mut self, allowed: Duration) -> anyhow::Result<Self> {
        self.allowed_ms = span_ms(allowed, "--allowed-lateness")?;
        Ok(self)
    }

    /// **The lateness rule**, the only copy: where a record at `t` stands when the windows ending
    /// at or before `closed` are final. `closed` is its partition's watermark *before the message
    /// that carries it* (or the source's capability, if that is later: windows the source let
    /// finalise while the partition was idle). With `E` the end of a window holding the record:
    /// `E > closed` on time; `E ≤ closed < E + allowed` a correction; else late. A record is late
    /// when its last window is; otherwise it counts in every window not past the allowed
    /// lateness and corrects the last one already final. `t` must have been admitted
    /// ([`WindowSpec::admit`]).
    pub fn classify(&self, closed: EventTime, t: EventTime) -> Timeliness {
        let gone = |e: EventTime| e.saturating_add(self.allowed_ms) <= closed;
        let last_end = self.window_end(t);
        if gone(last_end) {
            return Timeliness::Late {
                end: last_end,
                closed,
            };
        }
        let mut min_end = last_end;
        let mut corrects = None;
        for e in self.window_ends(t).filter(|e| !gone(*e)) {
            min_end = min_end.min(e);
            if e <= closed {
                corrects = Some(e);
            }
        }
        match corrects {
            Some(corrects) => Timeliness::Correction { min_end, corrects },
            None => Timeliness::OnTime { min_end },
        }
    }

    /// End (exclusive) of the last window holding `t` (the only one for tumbling windows).
    #[inline]
    pub fn window_end(&self, t: EventTime) -> EventTime {
        match self.session_gap_ms {
            Some(gap) => t.saturating_add(gap),
            None => (t / self.slide_ms)
                .saturating_mul(self.slide_ms)
                .saturating_add(self.size_ms),
        }
    }

    /// Start of the window ending at `end`.
    #[inline]
    pub fn window_start(&self, end: EventTime) -> EventTime {
        end.saturating_sub(self.size_ms)
    }

    /// Rounds a watermark down to the progress grain.
    #[inline]
    pub fn round_down(&self, t: EventTime) -> EventTime {
        t - t % self.grain_ms
    }
}

/// The watermark of one partition (one Kafka partition, one input file, one simulator stream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Largest event time seen so far, if any.
    pub max_seen: Option<EventTime>,
}

impl PartitionClock {
    /// The partition's watermark: largest event time seen minus lateness (0 before any record).
    #[inline]
    pub fn watermark(&self, spec: &WindowSpec) -> EventTime {
        self.max_seen
            .map_or(0, |m| m.saturating_sub(spec.lateness_ms))
    }

    /// Windows ending at or before this are final for the next message of the partition: its
    /// watermark formed by the *earlier* messages, or `held` (the source's capability) when
    /// that is later. Feed it to [`WindowSpec::classify`] for every record of the message, and
    /// only then [`observe`](Self::observe) the message's times: records of one message never
    /// make each other late.
    #[inline]
    pub fn closed(&self, spec: &WindowSpec, held: EventTime) -> EventTime {
        self.max_seen.map_or(0, |_| self.watermark(spec)).max(held)
    }

    /// Accounts for a message whose largest admitted event time is `t`.
    #[inline]
    pub fn observe(&mut self, t: EventTime) {
        self.max_seen = Some(self.max_seen.map_or(t, |m| m.max(t)));
    }
}

/// Position of a record in its input, used to break ties between equal event times: the later
/// record in input order wins. Compared as (partition, offset, index), so within one partition the
/// higher offset (file line) wins, and across partitions the higher partition number.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Partition number (Kafka partition, or the input file's index for its topic).
    pub partition: u32,
    /// Kafka offset or 1-based line number.
    pub offset: u64,
    /// Index of the record within its message (rows, lines and array elements, in order).
    pub index: u32,
}

/// A record with its event time and input position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed<R> {
    /// Event time (ms).
    pub time: EventTime,
    /// Where the record was read.
    pub pos: Position,
    /// The record itself.
    pub rec: R,
    /// Windows ending before this are past the allowed lateness for this record (hopping
    /// windows: a record can be on time for some of its windows and too late for others).
    pub min_end: EventTime,
}

impl<R> Timed<R> {
    /// The same record with its payload turned into another type.
    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> Timed<S> {
        Timed {
            time: self.time,
            pos: self.pos,
            rec: f(self.rec),
            min_end: self.min_end,
        }
    }

    /// Splits the payload off, keeping the time and position to put another payload in.
    pub fn take(self) -> (Timed<()>, R) {
        let rec = self.rec;
        (
            Timed {
                time: self.time,
                pos: self.pos,
                rec: (),
                min_end: self.min_end,
            },
            rec,
        )
    }
}

/// A configured duration in milliseconds, at most [`MAX_SPAN_MS`].
fn span_ms(d: Duration, what: &str) -> anyhow::Result<u64> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    anyhow::ensure!(
        ms <= MAX_SPAN_MS,
        "{what} {} is too long (at most 100 years)",
        humantime::format_duration(d)
    );
    Ok(ms)
}

/// Parses a human-friendly duration such as `60s`, `2m`, `1m30s` or `500ms`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration '{s}': {e} (examples: 60s, 2m, 500ms)"))
}

/// Formats epoch milliseconds as an RFC 3339 UTC time (to the millisecond); a time past the
/// year 9999 (which no admitted record has) is written as a number of milliseconds.
pub(crate) fn format_ms(t: EventTime) -> String {
    if t > MAX_EVENT_TIME {
        return format!("{t} ms");
    }
    let st = std::time::UNIX_EPOCH + Duration::from_millis(t);
    humantime::format_rfc3339_millis(st).to_string()
}

/// Wall-clock time as epoch milliseconds.
pub(crate) fn now_ms() -> EventTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WindowSpec {
        WindowSpec::new(Duration::from_secs(60), Duration::from_secs(120)).unwrap()
    }

    #[test]
    fn windows_are_epoch_aligned_and_half_open() {
        let s = spec();
        assert_eq!(s.window_end(0), 60_000);
        assert_eq!(s.window_end(59_999), 60_000);
        assert_eq!(s.window_end(60_000), 120_000);
        assert_eq!(s.window_start(120_000), 60_000);
        assert_eq!(s.grain_ms, 1000);
        let odd = WindowSpec::new(Duration::from_millis(1500), Duration::ZERO).unwrap();
        assert_eq!(odd.grain_ms, 100);
        assert!(WindowSpec::new(Duration::ZERO, Duration::ZERO).is_err());
    }

    fn late(t: Timeliness) -> bool {
        matches!(t, Timeliness::Late { .. })
    }

    #[test]
    fn lateness_uses_only_earlier_messages() {
        let s = spec();
        let mut c = PartitionClock::default();
        assert!(
            !late(s.classify(c.closed(&s, 0), 0)),
            "nothing seen yet: nothing is late"
        );
        c.observe(300_000); // watermark 180_000
        let closed = c.closed(&s, 0);
        assert_eq!(closed, 180_000);
        assert_eq!(
            s.classify(closed, 179_999),
            Timeliness::Late {
                end: 180_000,
                closed: 180_000
            },
            "window [120s,180s) ended at the watermark"
        );
        assert!(!late(s.classify(closed, 180_000)));
        c.observe(10); // older records never move the watermark back
        assert_eq!(c.watermark(&s), 180_000);
        assert_eq!(
            c.closed(&s, 240_000),
            240_000,
            "windows the source already finalised stay final"
        );
    }

    #[test]
    fn records_of_one_message_never_make_each_other_late() {
        // A subscription snapshot: one array whose books span 15 minutes.
        let s = spec();
        let mut c = PartitionClock::default();
        c.observe(1_000_000);
        let closed = c.closed(&s, 0); // 880_000, fixed for the whole message
        let message = [1_900_000, 1_000_500, 1_880_000];
        assert!(message.iter().all(|&t| !late(s.classify(closed, t))));
        c.observe(*message.iter().max().unwrap());
        assert!(
            late(s.classify(c.closed(&s, 0), 1_000_500)),
            "the next message sees the new watermark"
        );
    }

    #[test]
    fn allowed_lateness_turns_late_records_into_corrections() {
        let s = spec()
            .with_allowed_lateness(Duration::from_secs(60))
            .unwrap();
        let closed = 180_000;
        assert_eq!(
            s.classify(closed, 180_000),
            Timeliness::OnTime { min_end: 240_000 }
        );
        assert_eq!(
            s.classify(closed, 179_999),
            Timeliness::Correction {
                min_end: 180_000,
                corrects: 180_000
            },
            "window [120 s, 180 s) is final"
        );
        assert!(matches!(
            s.classify(closed, 120_000),
            Timeliness::Correction { .. }
        ));
        assert!(
            late(s.classify(closed, 119_999)),
            "window [60 s, 120 s) ended 60 s before"
        );
    }

    #[test]
    fn hopping_records_skip_windows_past_the_allowed_lateness() {
        let s = WindowSpec::new(Duration::from_secs(60), Duration::ZERO)
            .unwrap()
            .with_slide(Duration::from_secs(20))
            .unwrap()
            .with_allowed_lateness(Duration::from_secs(20))
            .unwrap();
        // t = 65 s is in [20,80), [40,100), [60,120); with 105 s closed, [20,80) is past the
        // allowed lateness, [40,100) is final (corrected), [60,120) still open.
        assert_eq!(
            s.classify(105_000, 65_000),
            Timeliness::Correction {
                min_end: 100_000,
                corrects: 100_000
            }
        );
    }

    #[test]
    fn event_times_far_ahead_or_past_the_year_9999_are_refused() {
        let s = spec();
        let now = 1_767_225_600_000;
        assert!(s.admit(now + 3_600_000, now).is_ok());
        let e = s.admit(now * 1000, now).unwrap_err();
        assert_eq!(e.reason, "event time in the future");
        assert!(e.detail.contains("ahead of the wall clock"), "{}", e.detail);
        assert_eq!(
            s.admit(u64::MAX, now).unwrap_err().reason,
            "event time in the future"
        );
        let lax = s
            .with_max_future(Duration::from_secs(86_400 * 365 * 99))
            .unwrap();
        assert_eq!(
            lax.admit(u64::MAX, u64::MAX - 5).unwrap_err().reason,
            "event time out of range"
        );
        assert!(s.admit(0, now).is_ok());
        assert!(WindowSpec::new(Duration::from_secs(60), Duration::MAX).is_err());
        assert_eq!(format_ms(u64::MAX), "18446744073709551615 ms");
        assert_eq!(format_ms(MAX_EVENT_TIME), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn hopping_windows_hold_size_over_slide_windows() {
        let s = WindowSpec::new(Duration::from_secs(60), Duration::ZERO)
            .unwrap()
            .with_slide(Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            s.window_ends(65_000).collect::<Vec<_>>(),
            [80_000, 100_000, 120_000]
        );
        // No window starts before the epoch.
        assert_eq!(s.window_ends(5_000).collect::<Vec<_>>(), [60_000]);
        assert_eq!(s.window_end(65_000), 120_000);
        assert_eq!(s.window_start(80_000), 20_000);
        assert!(spec().with_slide(Duration::from_secs(7)).is_err());
        assert_eq!(
            spec().window_ends(65_000).collect::<Vec<_>>(),
            [120_000],
            "tumbling: one window"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("invalid duration"));
    }
}
