//! Run container: sorted, disjoint runs of low values, stored as
//! `(start, length - 1)` u16 pairs after a u16 run count.

use std::iter::FusedIterator;

use super::header::le_u16;
use super::words::{clear_range, set_range};
use super::{ViewError, Words};

/// Run container: `(start, length - 1)` pairs.
#[derive(Debug, Clone, Copy)]
pub struct RunC<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) card: u32,
}

impl<'a> RunC<'a> {
    /// Cardinality from the header.
    #[inline]
    pub fn cardinality(&self) -> u32 {
        self.card
    }

    /// Number of runs.
    #[inline]
    pub fn run_count(&self) -> usize {
        self.bytes.len() / 4
    }

    /// Run `i` as `(first, last)`, both inclusive; `last` is clamped to 65535
    /// (a run past the chunk end only occurs in views that fail `verify`).
    ///
    /// # Panics
    /// If `i >= self.run_count()`.
    #[inline]
    pub fn run(&self, i: usize) -> (u16, u16) {
        let start = le_u16(self.bytes, 4 * i);
        let length = le_u16(self.bytes, 4 * i + 2);
        (start, start.saturating_add(length))
    }

    /// The runs as `(first, last)` inclusive pairs.
    pub fn runs(&self) -> impl ExactSizeIterator<Item = (u16, u16)> + 'a {
        let this = *self;
        (0..this.run_count()).map(move |i| this.run(i))
    }

    /// Whether `low` is in a run (binary search over the run starts).
    pub fn contains(&self, low: u16) -> bool {
        // Number of runs whose start is <= low.
        let (mut lo, mut hi) = (0usize, self.run_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if le_u16(self.bytes, 4 * mid) <= low {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo > 0 && self.run(lo - 1).1 >= low
    }

    /// The low values, run by run.
    pub fn iter(&self) -> RunValues<'a> {
        RunValues {
            run: *self,
            next_run: 0,
            next: 1,
            last: 0,
        }
    }

    /// `words |= runs`.
    pub fn or_into(&self, words: &mut Words) {
        for (first, last) in self.runs() {
            set_range(words, first, last);
        }
    }

    /// `words &= !runs`.
    pub fn andnot_into(&self, words: &mut Words) {
        for (first, last) in self.runs() {
            clear_range(words, first, last);
        }
    }

    /// `words = runs`.
    pub fn write_into(&self, words: &mut Words) {
        words.fill(0);
        self.or_into(words);
    }

    /// `words &= runs`: clears the gaps between the runs.
    pub fn and_into(&self, words: &mut Words) {
        // First low value not yet known to be covered or cleared.
        let mut from = 0u32;
        for (first, last) in self.runs() {
            if u32::from(first) > from {
                clear_range(words, from as u16, first - 1);
            }
            from = from.max(u32::from(last) + 1);
        }
        if from <= u32::from(u16::MAX) {
            clear_range(words, from as u16, u16::MAX);
        }
    }

    /// Checks that the runs are ordered, disjoint, inside the chunk and sum
    /// to the header cardinality; `index` is the container's index and `at`
    /// its byte offset in the view (the run count's position).
    pub(super) fn verify(&self, index: usize, at: usize) -> Result<(), ViewError> {
        let mut previous_end: Option<u16> = None;
        let mut total = 0u32;
        for j in 0..self.run_count() {
            let run_at = at + 2 + 4 * j;
            let start = le_u16(self.bytes, 4 * j);
            let length = le_u16(self.bytes, 4 * j + 2);
            if let Some(previous_end) = previous_end {
                if start <= previous_end {
                    return Err(ViewError::RunsOverlap {
                        offset: run_at,
                        index,
                        previous_end,
                        found: start,
                    });
                }
            }
            let end = u32::from(start) + u32::from(length);
            if end > u32::from(u16::MAX) {
                return Err(ViewError::RunOverflow {
                    offset: run_at,
                    index,
                    start,
                    found: length,
                });
            }
            previous_end = Some(end as u16);
            total += u32::from(length) + 1;
        }
        if total != self.card {
            return Err(ViewError::RunCardinality {
                offset: at,
                index,
                expected: self.card,
                found: total,
            });
        }
        Ok(())
    }
}

/// Low values of a [`RunC`].
#[derive(Debug, Clone)]
pub struct RunValues<'a> {
    run: RunC<'a>,
    next_run: usize,
    /// Next value of the current run, as u32 so that 65536 marks the end.
    next: u32,
    last: u32,
}

impl Iterator for RunValues<'_> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        if self.next > self.last {
            if self.next_run >= self.run.run_count() {
                return None;
            }
            let (first, last) = self.run.run(self.next_run);
            self.next_run += 1;
            self.next = u32::from(first);
            self.last = u32::from(last);
        }
        let v = self.next as u16;
        self.next += 1;
        Some(v)
    }
}

impl FusedIterator for RunValues<'_> {}

#[cfg(test)]
mod tests {
    use crate::bitmap_view::header::le_u16;
    use crate::bitmap_view::tests::{exercise, range_set, runs_few_bytes, serialize};
    use crate::bitmap_view::{BitmapView, ViewError};

    #[test]
    fn verify_catches_bad_runs() {
        // Runs: container 0 is one run 10 (length-1 4990) at byte 15.
        let good = runs_few_bytes();
        assert_eq!(
            (le_u16(&good, 13), le_u16(&good, 15), le_u16(&good, 17)),
            (1, 10, 4990)
        );
        let mut bytes = good.clone();
        bytes[17..19].copy_from_slice(&4989u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap().verify().unwrap_err(),
            ViewError::RunCardinality {
                offset: 13,
                index: 0,
                expected: 4991,
                found: 4990
            }
        );
        exercise(&bytes);
        let mut bytes = good.clone();
        bytes[15..17].copy_from_slice(&65000u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap().verify().unwrap_err(),
            ViewError::RunOverflow {
                offset: 15,
                index: 0,
                start: 65000,
                found: 4990
            }
        );
        exercise(&bytes);

        // Overlapping runs: two runs in one container.
        let mut rb = range_set(&[0..=9, 20..=29]);
        rb.optimize();
        let mut bytes = serialize(&rb);
        // 1 container: cookie 4, bitset 1, header 4 -> container at 9.
        assert_eq!(le_u16(&bytes, 9), 2);
        bytes[15..17].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap().verify().unwrap_err(),
            ViewError::RunsOverlap {
                offset: 15,
                index: 0,
                previous_end: 9,
                found: 5
            }
        );
        exercise(&bytes);
    }
}
