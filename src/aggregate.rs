//! Small mergeable accumulators for window metrics.
//!
//! Every accumulator can absorb one value and merge with another partial accumulator of the same
//! window and key, in any grouping and order: that is what lets records be pre-aggregated before
//! the exchange and makes results independent of the number of workers. Nulls (`None`) are
//! ignored by every statistic, and a statistic over no values is `None`.

use serde::{Deserialize, Serialize};

use crate::time::{EventTime, Position};

/// Count, compensated sum, min, max and Welford mean/M2 of the non-null values seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NumStats {
    n: u64,
    sum: f64,
    /// Neumaier compensation for `sum`, so sums barely depend on the order of addition.
    comp: f64,
    /// Sum of the absolute values: when it overflows, so may `sum` in some order of addition,
    /// so the sum is null — in every order, on any number of workers.
    abs: f64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl NumStats {
    /// Absorbs one value; `None` is ignored.
    #[inline]
    pub fn add(&mut self, v: Option<f64>) {
        let Some(x) = v else { return };
        if self.n == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.n += 1;
        self.abs += x.abs();
        self.add_to_sum(x);
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    #[inline]
    fn add_to_sum(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    /// Merges another partial accumulator (Chan et al.'s parallel variance update).
    pub fn merge(&mut self, o: &NumStats) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = o.clone();
            return;
        }
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        let (na, nb) = (self.n as f64, o.n as f64);
        self.mean += delta * nb / n as f64;
        self.m2 += o.m2 + delta * delta * na * nb / n as f64;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.add_to_sum(o.sum);
        self.comp += o.comp;
        self.abs += o.abs;
        self.n = n;
    }

    /// Number of non-null values.
    pub fn count(&self) -> u64 {
        self.n
    }
    /// Sum of the non-null values, `None` if there were none — or if it can overflow `f64`
    /// (the sum of absolute values passes ±1.8e308): no output ever holds NaN or Infinity,
    /// and whether a sum is null never depends on the order of addition.
    pub fn sum(&self) -> Option<f64> {
        (self.n > 0 && self.abs.is_finite())
            .then_some(self.sum + self.comp)
            .filter(|x| x.is_finite())
    }
    /// Arithmetic mean (`None` when the sum overflows).
    pub fn avg(&self) -> Option<f64> {
        self.sum()
            .map(|s| s / self.n as f64)
            .filter(|x| x.is_finite())
    }
    /// Smallest value.
    pub fn min(&self) -> Option<f64> {
        (self.n > 0).then_some(self.min)
    }
    /// Largest value.
    pub fn max(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max)
    }
    /// Sample standard deviation, `None` for fewer than two values.
    /// `None` too when the values are so large that the sum or the squared deviations
    /// overflow (values beyond about 1e154).
    pub fn stddev_samp(&self) -> Option<f64> {
        // `max(0.0)` would turn a NaN into 0: check first.
        (self.n > 1 && self.abs.is_finite() && self.m2.is_finite())
            .then(|| (self.m2.max(0.0) / (self.n - 1) as f64).sqrt())
            .filter(|x| x.is_finite())
    }
}

/// The value carried by the record with the greatest (event time, input position).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latest<V> {
    at: Option<(EventTime, Position)>,
    value: Option<V>,
}

impl<V> Default for Latest<V> {
    fn default() -> Self {
        Self {
            at: None,
            value: None,
        }
    }
}

impl<V: Clone> Latest<V> {
    /// Offers the value of a record read at `pos` with event time `t`.
    #[inline]
    pub fn offer(&mut self, t: EventTime, pos: Position, value: V) {
        if self.at.is_none_or(|at| (t, pos) > at) {
            self.at = Some((t, pos));
            self.value = Some(value);
        }
    }

    /// Merges another partial accumulator.
    pub fn merge(&mut self, o: &Latest<V>) {
        if let (Some((t, pos)), Some(v)) = (o.at, &o.value) {
            self.offer(t, pos, v.clone());
        }
    }

    /// The winning value, if any record was offered.
    pub fn get(&self) -> Option<&V> {
        self.value.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(xs: &[Option<f64>]) -> NumStats {
        let mut s = NumStats::default();
        xs.iter().for_each(|x| s.add(*x));
        s
    }

    #[test]
    fn nulls_are_ignored_and_empty_is_null() {
        let s = stats(&[None, None]);
        assert_eq!(
            (s.count(), s.sum(), s.avg(), s.min(), s.max()),
            (0, None, None, None, None)
        );
        let s = stats(&[Some(2.0), None, Some(4.0)]);
        assert_eq!(
            (s.sum(), s.avg(), s.min(), s.max()),
            (Some(6.0), Some(3.0), Some(2.0), Some(4.0))
        );
    }

    #[test]
    fn overflowing_sums_are_null_never_infinite() {
        let s = stats(&[Some(f64::MAX), Some(f64::MAX), Some(-1.0)]);
        assert_eq!((s.sum(), s.avg(), s.stddev_samp()), (None, None, None));
        assert_eq!((s.min(), s.max()), (Some(-1.0), Some(f64::MAX)));
        // MAX + (−MAX) does not overflow in this order, but would in another: null either way.
        let mut a = stats(&[Some(f64::MAX), Some(-f64::MAX)]);
        assert_eq!(a.sum(), None);
        let (x, y) = (stats(&[Some(f64::MAX)]), stats(&[Some(-f64::MAX)]));
        a = x.clone();
        a.merge(&y);
        assert_eq!((a.sum(), a.avg()), (None, None));
        assert_eq!(stats(&[Some(1e200), Some(-1e200)]).stddev_samp(), None);
    }

    #[test]
    fn sample_stddev() {
        assert_eq!(stats(&[Some(5.0)]).stddev_samp(), None);
        let s = stats(&[
            Some(2.0),
            Some(4.0),
            Some(4.0),
            Some(4.0),
            Some(5.0),
            Some(5.0),
            Some(7.0),
            Some(9.0),
        ]);
        assert!((s.stddev_samp().unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn merge_equals_sequential() {
        let xs: Vec<Option<f64>> = (0..100)
            .map(|i| Some(100_000.0 + (i as f64 * 0.37).sin()))
            .collect();
        let whole = stats(&xs);
        let mut a = stats(&xs[..13]);
        let b = stats(&xs[13..60]);
        let c = stats(&xs[60..]);
        let mut bc = b.clone();
        bc.merge(&c);
        a.merge(&bc);
        let rel = |x: f64, y: f64| ((x - y) / y).abs();
        assert!(rel(a.sum().unwrap(), whole.sum().unwrap()) < 1e-15);
        assert!(rel(a.stddev_samp().unwrap(), whole.stddev_samp().unwrap()) < 1e-9);
        assert_eq!(
            (a.min(), a.max(), a.count()),
            (whole.min(), whole.max(), whole.count())
        );
    }

    #[test]
    fn latest_breaks_ties_by_position() {
        let p = |partition, offset, index| Position {
            partition,
            offset,
            index,
        };
        let mut l = Latest::default();
        l.offer(10, p(0, 5, 0), "a");
        l.offer(10, p(0, 5, 1), "b"); // later element of the same message
        l.offer(9, p(3, 9, 9), "old");
        assert_eq!(l.get(), Some(&"b"));
        let mut other = Latest::default();
        other.offer(10, p(1, 0, 0), "higher partition");
        l.merge(&other);
        assert_eq!(l.get(), Some(&"higher partition"));
        let mut m = Latest::default();
        m.offer(10, p(0, 6, 0), "later offset");
        let mut n = Latest::default();
        n.offer(10, p(0, 5, 1), "b");
        n.merge(&m);
        assert_eq!(n.get(), Some(&"later offset"));
    }
}
