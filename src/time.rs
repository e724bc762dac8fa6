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

/// Where a record stands against its partition's watermark (see [`PartitionClock::classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeliness {
    /// Its window is still open: it counts in the final result.
    OnTime,
    /// Its window is final but within the allowed lateness: it produces a correction.
    Correction,
    /// Later than both: dead-lettered.
    Late,
}

impl WindowSpec {
    /// A spec from durations; the grain is the largest of 1 s, 100 ms, 10 ms, 1 ms that divides
    /// the window length.
    pub fn new(size: Duration, lateness: Duration) -> anyhow::Result<Self> {
        let size_ms = u64::try_from(size.as_millis()).unwrap_or(u64::MAX);
        anyhow::ensure!(size_ms > 0, "--window must be at least 1ms");
        let lateness_ms = u64::try_from(lateness.as_millis()).unwrap_or(u64::MAX);
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
        })
    }

    /// Hopping windows: a window of `size_ms` starts every `slide` (which must divide the size).
    pub fn with_slide(mut self, slide: Duration) -> anyhow::Result<Self> {
        let slide_ms = u64::try_from(slide.as_millis()).unwrap_or(u64::MAX);
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
        let gap_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
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
    pub fn with_allowed_lateness(mut self, allowed: Duration) -> Self {
        self.allowed_ms = u64::try_from(allowed.as_millis()).unwrap_or(u64::MAX);
        self
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
        end - self.size_ms
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

    /// Whether a record at `t`, read now, is late: its window ended, plus the allowed lateness,
    /// at or before the watermark formed by the records read earlier from this partition.
    #[inline]
    pub fn is_late(&self, spec: &WindowSpec, t: EventTime) -> bool {
        self.classify(spec, t) == Timeliness::Late
    }

    /// The extended lateness rule: with `E` the end of the record's window and `W` the
    /// partition's watermark before the record, it is on time if `E > W`, a correction if
    /// `E ≤ W < E + allowed`, and late if `E + allowed ≤ W`. Only the partition's own history
    /// decides, so the classification is deterministic.
    #[inline]
    pub fn classify(&self, spec: &WindowSpec, t: EventTime) -> Timeliness {
        if self.max_seen.is_none() {
            return Timeliness::OnTime;
        }
        let (end, wm) = (spec.window_end(t), self.watermark(spec));
        if end > wm {
            Timeliness::OnTime
        } else if end.saturating_add(spec.allowed_ms) > wm {
            Timeliness::Correction
        } else {
            Timeliness::Late
        }
    }

    /// Accounts for a well-formed record at `t`.
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

/// Parses a human-friendly duration such as `60s`, `2m`, `1m30s` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration '{s}': {e} (examples: 60s, 2m, 500ms)"))
}

/// Formats epoch milliseconds as an RFC 3339 UTC time (to the millisecond).
pub fn format_ms(t: EventTime) -> String {
    let st = std::time::UNIX_EPOCH + Duration::from_millis(t);
    humantime::format_rfc3339_millis(st).to_string()
}

/// Wall-clock time as epoch milliseconds.
pub fn now_ms() -> EventTime {
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

    #[test]
    fn lateness_uses_only_earlier_records() {
        let s = spec();
        let mut c = PartitionClock::default();
        assert!(!c.is_late(&s, 0), "nothing seen yet: nothing is late");
        c.observe(300_000); // watermark 180_000
        assert!(
            c.is_late(&s, 179_999),
            "window [120s,180s) ended at the watermark"
        );
        assert!(!c.is_late(&s, 180_000));
        c.observe(10); // older records never move the watermark back
        assert_eq!(c.watermark(&s), 180_000);
    }

    #[test]
    fn allowed_lateness_turns_late_records_into_corrections() {
        let s = spec().with_allowed_lateness(Duration::from_secs(60));
        let mut c = PartitionClock::default();
        c.observe(300_000); // watermark 180_000
        assert_eq!(c.classify(&s, 180_000), Timeliness::OnTime);
        assert_eq!(
            c.classify(&s, 179_999),
            Timeliness::Correction,
            "window [120 s, 180 s) is final"
        );
        assert_eq!(c.classify(&s, 120_000), Timeliness::Correction);
        assert_eq!(
            c.classify(&s, 119_999),
            Timeliness::Late,
            "window [60 s, 120 s) ended 60 s before"
        );
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
