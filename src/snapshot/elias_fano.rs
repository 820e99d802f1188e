//! Elias–Fano coding of a non-decreasing sequence of integers, read in
//! place: the group offsets of a version 5 compact dictionary
//! ([`super::compact`]), about two bits plus `l` bits a value instead of
//! four or eight bytes.
//!
//! For `n` values in `0..=universe`, `l` is `floor(log2(universe / n))`
//! (0 when `universe < n`); it is derived, not stored. Three arrays of
//! little-endian `u64` words follow each other:
//!
//! ```text
//! samples  ceil(n / 64) words: the position in `high` of the one bit of
//!          value 64k
//! high     ceil(((universe >> l) + n) / 64) words: value i sets bit
//!          (v_i >> l) + i
//! low      ceil(n * l / 64) words: value i's low l bits at bits
//!          i * l .. i * l + l
//! ```
//!
//! Every bit past the values' bits is zero. Value i is found by starting
//! at sample i / 64 and counting ones: at most 63 ones, in a word or two
//! when `l` fits the values' spacing.

/// Values between samples.
pub const SAMPLE: usize = 64;

fn rd64(b: &[u8], word: usize) -> Option<u64> {
    let at = word.checked_mul(8)?;
    let x: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(x))
}

/// `l`: the low bits of each value.
pub fn low_bits(n: u64, universe: u64) -> u32 {
    if n == 0 || universe < n {
        0
    } else {
        (universe / n).ilog2()
    }
}

/// The byte lengths of the three arrays, or `None` when they overflow.
fn sizes(n: u64, universe: u64) -> Option<(u64, u64, u64)> {
    let l = u64::from(low_bits(n, universe));
    let samples = n.div_ceil(SAMPLE as u64).checked_mul(8)?;
    let high_bits = (universe >> l).checked_add(n)?;
    let high = high_bits.div_ceil(64).checked_mul(8)?;
    let low = n.checked_mul(l)?.div_ceil(64).checked_mul(8)?;
    Some((samples, high, low))
}

/// The bytes `n` values in `0..=universe` take, or `None` when that
/// overflows.
pub fn encoded_len(n: u64, universe: u64) -> Option<u64> {
    let (s, h, l) = sizes(n, universe)?;
    s.checked_add(h)?.checked_add(l)
}

/// Encodes `values` (non-decreasing, each at most `universe`); `None`
/// when they are not.
pub fn encode(values: &[u64], universe: u64) -> Option<Vec<u8>> {
    let n = values.len() as u64;
    let l = low_bits(n, universe);
    let (s, h, lo) = sizes(n, universe)?;
    let mut samples = vec![0u64; (s / 8) as usize];
    let mut high = vec![0u64; (h / 8) as usize];
    let mut low = vec![0u64; (lo / 8) as usize];
    let mask = (1u64 << l) - 1;
    let mut last = 0;
    for (i, &v) in values.iter().enumerate() {
        if v < last || v > universe {
            return None;
        }
        last = v;
        let pos = (v >> l) + i as u64;
        high[(pos / 64) as usize] |= 1 << (pos % 64);
        if i % SAMPLE == 0 {
            samples[i / SAMPLE] = pos;
        }
        if l > 0 {
            let bit = i as u64 * u64::from(l);
            let (w, o) = ((bit / 64) as usize, bit % 64);
            low[w] |= (v & mask) << o;
            if o + u64::from(l) > 64 {
                low[w + 1] |= (v & mask) >> (64 - o);
            }
        }
    }
    let mut out = Vec::with_capacity((s + h + lo) as usize);
    for w in samples.iter().chain(&high).chain(&low) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    Some(out)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The set bits of each byte of `x`, in that byte (no POPCNT needed: the
/// default build targets baseline x86-64).
#[inline]
fn byte_counts(x: u64) -> u64 {
    let s = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let s = (s & 0x3333_3333_3333_3333) + ((s >> 2) & 0x3333_3333_3333_3333);
    (s + (s >> 4)) & 0x0F0F_0F0F_0F0F_0F0F
}

/// The set bits of `x`.
#[inline]
fn ones(x: u64) -> u32 {
    (byte_counts(x).wrapping_mul(ONES) >> 56) as u32
}

/// `SELECT_IN_BYTE[b][r]`: the place of the `r`-th set bit of byte `b`.
const SELECT_IN_BYTE: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let (mut bit, mut r) = (0, 0);
        while bit < 8 {
            if b >> bit & 1 == 1 {
                t[b][r] = bit as u8;
                r += 1;
            }
            bit += 1;
        }
        b += 1;
    }
    t
};

/// The `r`-th (from 0) set bit of `x`, which has more than `r`: the byte
/// it lies in from the bytes' running counts, then a table.
#[inline]
fn select_in_word(x: u64, r: u32) -> u32 {
    // Byte i of `prefix`: the set bits of bytes 0..=i (at most 64).
    let prefix = byte_counts(x).wrapping_mul(ONES);
    // High bit of byte i set where prefix_i <= r: a run of low bytes.
    let below = (((u64::from(r) * ONES) | HIGHS) - prefix) & HIGHS;
    let byte = ((below >> 7).wrapping_mul(ONES) >> 56) as u32;
    let before = if byte == 0 {
        0
    } else {
        (prefix >> (8 * byte - 8)) as u32 & 0xff
    };
    let b = (x >> (8 * byte)) as usize & 0xff;
    byte * 8 + u32::from(SELECT_IN_BYTE[b][(r - before) as usize])
}

/// An Elias–Fano sequence read in place.
#[derive(Copy, Clone, Debug)]
pub struct EliasFano<'a> {
    n: usize,
    universe: u64,
    l: u32,
    samples: &'a [u8],
    high: &'a [u8],
    low: &'a [u8],
}

impl<'a> EliasFano<'a> {
    /// Reads `n` values in `0..=universe` from `b`, which must be exactly
    /// [`encoded_len`] bytes long. The values are checked as they are
    /// read (a corrupt sequence answers `None`), and all at once by
    /// [`EliasFano::verify`].
    pub fn parse(b: &'a [u8], n: u64, universe: u64) -> Result<EliasFano<'a>, String> {
        let (s, h, lo) =
            sizes(n, universe).ok_or_else(|| format!("{n} values up to {universe} overflow"))?;
        if s + h + lo != b.len() as u64 {
            return Err(format!(
                "{n} values up to {universe} take {} bytes, not {}",
                s + h + lo,
                b.len()
            ));
        }
        let (s, h) = (s as usize, h as usize);
        Ok(EliasFano {
            n: n as usize,
            universe,
            l: low_bits(n, universe),
            samples: &b[..s],
            high: &b[s..s + h],
            low: &b[s + h..],
        })
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn low(&self, i: usize) -> Option<u64> {
        if self.l == 0 {
            return Some(0);
        }
        let bit = i as u64 * u64::from(self.l);
        let (w, o) = ((bit / 64) as usize, (bit % 64) as u32);
        let mut v = rd64(self.low, w)? >> o;
        if o + self.l > 64 {
            v |= rd64(self.low, w + 1)? << (64 - o);
        }
        Some(v & ((1u64 << self.l) - 1))
    }

    /// The position of the `r`-th (from 0) one at or after bit `from`.
    fn select_from(&self, from: u64, mut r: u32) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut word = rd64(self.high, w)? & (!0u64 << (from % 64));
        loop {
            let c = ones(word);
            if r < c {
                return Some(w as u64 * 64 + u64::from(select_in_word(word, r)));
            }
            r -= c;
            w += 1;
            word = rd64(self.high, w)?;
        }
    }

    /// The position of the first one at or after bit `from`.
    #[inline]
    fn next_one(&self, from: u64) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut word = rd64(self.high, w)? & (!0u64 << (from % 64));
        while word == 0 {
            w += 1;
            word = rd64(self.high, w)?;
        }
        Some(w as u64 * 64 + u64::from(word.trailing_zeros()))
    }

    fn value(&self, i: usize, pos: u64) -> Option<u64> {
        let high = pos.checked_sub(i as u64)?;
        let v = high << self.l | self.low(i)?;
        (v <= self.universe).then_some(v)
    }

    fn position(&self, i: usize) -> Option<u64> {
        let k = i / SAMPLE;
        let start = rd64(self.samples, k)?;
        self.select_from(start, (i % SAMPLE) as u32)
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> Option<u64> {
        if i >= self.n {
            return None;
        }
        self.value(i, self.position(i)?)
    }

    /// Values `i` and `i + 1`.
    pub fn pair(&self, i: usize) -> Option<(u64, u64)> {
        if i + 1 >= self.n {
            return None;
        }
        let p = self.position(i)?;
        let q = self.next_one(p + 1)?;
        Some((self.value(i, p)?, self.value(i + 1, q)?))
    }

    /// Every value, in order (one pass over `high`), or `None` where the
    /// bits do not hold `n` values.
    pub fn values(&self) -> Option<Vec<u64>> {
        let mut out = Vec::with_capacity(self.n);
        let mut pos = 0u64;
        for i in 0..self.n {
            pos = self.next_one(if i == 0 { 0 } else { pos + 1 })?;
            out.push(self.value(i, pos)?);
        }
        Some(out)
    }

    /// Checks every bit: the values decode in order within the universe,
    /// and encoding them again gives exactly these bytes (samples,
    /// padding and all).
    pub fn verify(&self) -> Result<Vec<u64>, String> {
        let values = self
            .values()
            .ok_or("the offsets' high bits hold too few values")?;
        let again = encode(&values, self.universe).ok_or("the offsets are out of order")?;
        let len = self.samples.len() + self.high.len() + self.low.len();
        let mine = [self.samples, self.high, self.low].concat();
        if again.len() != len || again != mine {
            return Err("the offsets' bits differ from their values' encoding".into());
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: &[u64], universe: u64) {
        let b = encode(values, universe).unwrap();
        assert_eq!(
            b.len() as u64,
            encoded_len(values.len() as u64, universe).unwrap()
        );
        let ef = EliasFano::parse(&b, values.len() as u64, universe).unwrap();
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(ef.get(i), Some(v), "value {i}");
            if i + 1 < values.len() {
                assert_eq!(ef.pair(i), Some((v, values[i + 1])), "pair {i}");
            }
        }
        assert_eq!(ef.get(values.len()), None);
        assert_eq!(ef.pair(values.len().saturating_sub(1)), None);
        assert_eq!(ef.verify().unwrap(), values);
    }

    #[test]
    fn sequences_round_trip() {
        round_trip(&[0], 0);
        round_trip(&[0, 0, 0], 0);
        round_trip(&[0, 5, 5, 9, 1000], 1000);
        round_trip(&[7], 7);
        round_trip(&[0, u64::from(u32::MAX) * 3], u64::from(u32::MAX) * 3);
        let mut x = 0u64;
        let mut seq = Vec::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            x += seed % 200;
            seq.push(x);
        }
        round_trip(&seq, x);
        round_trip(&seq, x + 1_000_000);
        let dense: Vec<u64> = (0..1000).collect();
        round_trip(&dense, 999);
    }

    #[test]
    fn select_in_word_agrees_with_clearing_bits() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut words = vec![
            1,
            1 << 63,
            u64::MAX,
            0x8000_0000_0000_0001,
            0xFF00,
            0x00FF_0000_0000_0000,
        ];
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            words.push(seed);
            words.push(seed & (seed >> 3) & (seed >> 7));
        }
        for x in words.into_iter().filter(|&x| x != 0) {
            assert_eq!(ones(x), x.count_ones());
            let mut y = x;
            for r in 0..x.count_ones() {
                assert_eq!(select_in_word(x, r), y.trailing_zeros(), "{x:#x}, {r}");
                y &= y - 1;
            }
        }
    }

    #[test]
    fn out_of_order_values_are_refused() {
        assert!(encode(&[3, 2], 3).is_none());
        assert!(encode(&[0, 9], 8).is_none());
    }

    #[test]
    fn no_flipped_bit_reads_as_the_same_values() {
        let values: Vec<u64> = (0..600u64).map(|i| i * 37 + i % 5).collect();
        let universe = 600 * 37;
        let good = encode(&values, universe).unwrap();
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                // Refused, or read as other values (which the dictionary
                // checks against its groups).
                let ef = EliasFano::parse(&bad, 600, universe).unwrap();
                assert!(
                    ef.verify().map_or(true, |v| v != values),
                    "bit {bit} of byte {byte}"
                );
            }
        }
        assert!(EliasFano::parse(&good[1..], 600, universe).is_err());
    }
}
