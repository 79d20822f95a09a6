//! Summaries of measured samples, shared by every report: the `polis`
//! binary's demos, the projection runtime's lag and the benchmark runner.

/// The nearest-rank percentile `q` (0.0 to 1.0) of `sorted`, which must be
/// in ascending order: the value at rank ⌈q·n⌉ (1-based) of the n values,
/// that is the smallest value with at least a fraction `q` of the values
/// at or below it. `q = 0` gives the smallest value, `q = 1` the largest;
/// `None` when there are no values.
///
/// Nearest-rank always answers a value that was measured (no interpolation
/// between two), the same as PostgreSQL's `percentile_disc`, so a p99 read
/// here and one computed in SQL over the same samples agree. A `q` outside
/// 0 to 1 is clamped into it.
///
/// ```
/// use polis_core::stats::percentile;
///
/// let sorted = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
/// assert_eq!(percentile(&sorted, 0.5), Some(5));
/// assert_eq!(percentile(&sorted, 0.99), Some(10));
/// assert_eq!(percentile::<u64>(&[], 0.5), None);
/// ```
pub fn percentile<T: Copy + PartialOrd>(sorted: &[T], q: f64) -> Option<T> {
    debug_assert!(sorted.is_sorted(), "percentile needs its values in ascending order");
    let n = sorted.len();
    // `as usize` saturates: NaN and negative ranks become 0, then rank 1.
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::percentile;

    #[test]
    fn no_values_have_no_percentile() {
        assert_eq!(percentile::<f64>(&[], 0.0), None);
        assert_eq!(percentile::<f64>(&[], 0.5), None);
        assert_eq!(percentile::<f64>(&[], 1.0), None);
    }

    #[test]
    fn one_value_is_every_percentile() {
        for q in [0.0, 0.01, 0.5, 0.99, 1.0] {
            assert_eq!(percentile(&[4.5], q), Some(4.5), "q = {q}");
        }
    }

    #[test]
    fn the_ends_are_the_smallest_and_the_largest() {
        let sorted = [3, 5, 8, 13];
        assert_eq!(percentile(&sorted, 0.0), Some(3));
        assert_eq!(percentile(&sorted, 1.0), Some(13));
    }

    #[test]
    fn the_rank_is_rounded_up() {
        // n = 4: q·n = 2 exactly is rank 2; anything above it is rank 3.
        let sorted = [10, 20, 30, 40];
        assert_eq!(percentile(&sorted, 0.25), Some(10));
        assert_eq!(percentile(&sorted, 0.5), Some(20));
        assert_eq!(percentile(&sorted, 0.500_001), Some(30));
        assert_eq!(percentile(&sorted, 0.75), Some(30));
        assert_eq!(percentile(&sorted, 0.76), Some(40));
        // n = 1000: p50 is the 500th value, p99 the 990th, p99.9 the 999th.
        let thousand: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&thousand, 0.5), Some(500));
        assert_eq!(percentile(&thousand, 0.99), Some(990));
        assert_eq!(percentile(&thousand, 0.999), Some(999));
    }

    #[test]
    fn durations_and_floats_alike() {
        let durations = [Duration::from_millis(1), Duration::from_millis(2), Duration::from_millis(9)];
        assert_eq!(percentile(&durations, 0.5), Some(Duration::from_millis(2)));
        assert_eq!(percentile(&[0.25, 0.5, 0.75], 0.9), Some(0.75));
    }

    #[test]
    fn a_fraction_outside_zero_to_one_is_clamped() {
        assert_eq!(percentile(&[1, 2, 3], -1.0), Some(1));
        assert_eq!(percentile(&[1, 2, 3], 2.0), Some(3));
        assert_eq!(percentile(&[1, 2, 3], f64::NAN), Some(1));
    }
}
