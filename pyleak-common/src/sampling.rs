//! Poisson sampling by bytes (`--sample-bytes R`), the arithmetic both sides share.
//!
//! As in tcmalloc's heap profiler and Datadog's: an allocation of `s` bytes is sampled with
//! probability `p(s) = 1 - exp(-s/R)`, and a sampled one stands for `s / p(s)` bytes and
//! `1 / p(s)` allocations, so sums over sampled allocations are unbiased estimates of the
//! true sums. Small allocations are rarely sampled (p ≈ s/R) and each stands for about `R`
//! bytes; allocations of many R are always sampled at their own size.
//!
//! The kernel has no floating point: `p` comes from a table of `1 - exp(-k/STEPS)` for
//! `k = 0..=TABLE_LEN-1` (x = s/R up to [`MAX_X`]), filled by the user side, linearly
//! interpolated. The decision and the weights use the same interpolated `p`, so the estimate
//! stays unbiased whatever the interpolation error. Beyond [`MAX_X`] every allocation is
//! sampled with weight 1 (p would round to 1 there anyway).

/// Table steps per unit of `x = size / R`.
pub const STEPS: u64 = 1024;
/// Largest `x` in the table; larger allocations are always sampled.
pub const MAX_X: u64 = 8;
/// Entries of the table (`0..=MAX_X*STEPS`).
pub const TABLE_LEN: u32 = (MAX_X * STEPS) as u32 + 1;
/// Fixed-point unit of sampled allocation counts: a block's count weight is `COUNT_ONE / p`.
/// In exact mode every block weighs 1 (the counters are plain counts).
pub const COUNT_ONE: u64 = 1 << 16;
/// Largest accepted `R`: keeps `size << 32` (size < MAX_X * R) inside 64 bits.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 28;

/// What a sampled allocation stands for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Weight {
    /// Estimated bytes (`s / p`).
    pub bytes: u64,
    /// Estimated allocations, in units of [`COUNT_ONE`] (`COUNT_ONE / p`).
    pub count: u64,
}

/// The sampling decision for an allocation of `size` bytes with mean sampling interval
/// `r` (0 < r <= MAX_SAMPLE_BYTES). `table(k)` is entry k of the probability table (p scaled
/// by 2^32, saturated to u32::MAX), `random` a uniform 32-bit random number. Returns the
/// weights if sampled.
#[inline(always)]
pub fn decide(size: u64, r: u64, table: impl Fn(u32) -> Option<u32>, random: u32) -> Option<Weight> {
    if size == 0 {
        return None; // a zero-byte request holds no bytes to estimate
    }
    let scaled = size * STEPS;
    let k = scaled / r;
    if k >= MAX_X * STEPS {
        return Some(Weight { bytes: size, count: COUNT_ONE });
    }
    let frac = scaled - k * r;
    let lo = table(k as u32)? as u64;
    let hi = table(k as u32 + 1)? as u64;
    let p32 = lo + (hi.saturating_sub(lo) * frac) / r;
    if p32 == 0 || random as u64 >= p32 {
        return None;
    }
    Some(Weight { bytes: (size << 32) / p32, count: (COUNT_ONE << 32) / p32 })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn table() -> Vec<u32> {
        (0..TABLE_LEN)
            .map(|k| {
                let x = k as f64 / STEPS as f64;
                ((1.0 - (-x).exp()) * 4294967296.0).min(u32::MAX as f64) as u32
            })
            .collect()
    }

    /// The exact expectation over all 2^32 random values: `decide` samples the values below
    /// some threshold (found by bisection, treating `decide` as a black box), each with the
    /// same weight; so E[bytes] = threshold / 2^32 * weight.
    fn expectation(size: u64, r: u64, t: &[u32]) -> (f64, f64) {
        let d = |random: u32| decide(size, r, |k| t.get(k as usize).copied(), random);
        let Some(w) = d(0) else { return (0.0, 0.0) };
        let (mut lo, mut hi) = (0u64, 1u64 << 32); // d(lo) samples; d(hi) does not (or hi = 2^32)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if d(mid as u32).is_some() { lo = mid } else { hi = mid }
        }
        let p = hi as f64 / 4294967296.0;
        (p * w.bytes as f64, p * w.count as f64 / COUNT_ONE as f64)
    }

    #[test]
    fn the_estimate_is_unbiased_for_every_size() {
        let t = table();
        let r = 512 * 1024;
        for size in [
            1u64, 16, 64, 100, 1000, 8192, 65536, 300_000, 524_288, 2_000_000, 4_194_303, 4_194_304,
            50_000_000,
        ] {
            let (bytes, count) = expectation(size, r, &t);
            let err = (bytes - size as f64).abs() / size as f64;
            // Only integer division rounds: well under a millionth.
            assert!(err < 1e-4, "size {size}: E[bytes] = {bytes}");
            assert!((count - 1.0).abs() < 1e-3, "size {size}: E[count] = {count}");
        }
    }

    #[test]
    fn small_allocations_are_rare_and_stand_for_about_r() {
        let t = table();
        let r = 512 * 1024;
        let w = decide(64, r, |k| t.get(k as usize).copied(), 0).expect("random 0 always samples");
        assert!((w.bytes as f64 - r as f64).abs() / (r as f64) < 0.01, "{w:?}");
        assert_eq!(decide(64, r, |k| t.get(k as usize).copied(), 1 << 20), None);
        assert_eq!(decide(0, r, |k| t.get(k as usize).copied(), 0), None);
    }

    #[test]
    fn huge_allocations_are_always_sampled_at_their_size() {
        let t = table();
        let w = decide(100 << 20, 1 << 20, |k| t.get(k as usize).copied(), u32::MAX).unwrap();
        assert_eq!(w, Weight { bytes: 100 << 20, count: COUNT_ONE });
    }

    #[test]
    fn weights_fit_in_64_bits_at_the_limits() {
        let t = table();
        let r = MAX_SAMPLE_BYTES;
        let w = decide(MAX_X * r - 1, r, |k| t.get(k as usize).copied(), 0).unwrap();
        assert!(w.bytes >= MAX_X * r - 1);
        let w = decide(1, 1, |k| t.get(k as usize).copied(), 0).unwrap();
        assert!(w.bytes >= 1);
    }
}
