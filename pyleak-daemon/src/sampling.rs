//! `--sample-bytes R`: the user side of Poisson sampling by bytes (the arithmetic shared with
//! the kernel is `pyleak_common::sampling`). The loader fills the kernel's probability table
//! from [`probability_table`]; reports and metrics then carry estimates, and say so.
use pyleak_common::{
    DEFAULT_MAX_LIVE_ALLOCS,
    sampling::{MAX_SAMPLE_BYTES, STEPS, TABLE_LEN},
};

/// `1 - exp(-k/STEPS)` for every table index, scaled by 2^32 and saturated to u32::MAX.
pub fn probability_table() -> Vec<u32> {
    (0..TABLE_LEN)
        .map(|k| {
            let x = k as f64 / STEPS as f64;
            // -expm1(-x) keeps precision for small x, where most allocations fall.
            ((-(-x).exp_m1()) * 4_294_967_296.0).min(u32::MAX as f64) as u32
        })
        .collect()
}

/// Parses `--sample-bytes`: a byte count with an optional K/KiB/M/MiB suffix (powers of 1024).
pub fn parse_sample_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a byte count such as 524288 or 512KiB, got {text:?}"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use K, KiB, M or MiB)")),
    };
    let bytes = n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))?;
    if !(1..=MAX_SAMPLE_BYTES).contains(&bytes) {
        return Err(format!(
            "the sampling interval must be between 1 byte and {} MiB, got {text:?}",
            MAX_SAMPLE_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// Outstanding memory that sampled mode's default outstanding-allocation map has room for
/// (see [`default_max_live_allocs`]).
pub const SAMPLED_COVER_BYTES: u64 = 64 << 30;
/// The least default capacity in sampled mode (under 2 MiB of kernel memory).
const SAMPLED_MIN_LIVE_ALLOCS: u32 = 16 * 1024;

/// The outstanding-allocation map's capacity when the user sets none (`--max-allocations`,
/// `limits.max_live_allocations`), for sampling interval `sample_bytes` (0: exact mode).
///
/// The map is reserved whole at attach, 112 bytes per entry, so its size is kernel
/// memory held for as long as a process is traced. Exact mode records every outstanding
/// block and keeps [`DEFAULT_MAX_LIVE_ALLOCS`]. Sampled mode records a block of `s` bytes with
/// probability `p(s) = 1 - exp(-s/R) <= s/R`, so the blocks it holds number on average at most
/// outstanding bytes / R: room for [`SAMPLED_COVER_BYTES`] of outstanding memory is
/// `SAMPLED_COVER_BYTES / R` entries (131,072 at 512 KiB: 14 MiB where exact mode takes
/// 112 MiB), rounded up to a power of two, between [`SAMPLED_MIN_LIVE_ALLOCS`] and the exact
/// default. Blocks beyond it are counted as lost and reported, as in exact mode.
pub fn default_max_live_allocs(sample_bytes: u64) -> u32 {
    if sample_bytes == 0 {
        return DEFAULT_MAX_LIVE_ALLOCS;
    }
    (SAMPLED_COVER_BYTES / sample_bytes)
        .next_power_of_two()
        .clamp(SAMPLED_MIN_LIVE_ALLOCS as u64, DEFAULT_MAX_LIVE_ALLOCS as u64) as u32
}

/// The note a sampled report carries.
pub fn note(sample_bytes: u64) -> String {
    format!(
        "sampled: about one allocation per {} allocated was recorded (Poisson sampling by bytes, --sample-bytes {sample_bytes}); bytes and counts are unbiased estimates, less certain for stacks with little memory",
        human(sample_bytes)
    )
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use pyleak_common::sampling::{COUNT_ONE, decide};

    use super::*;

    #[test]
    fn sampled_mode_sizes_the_outstanding_map_for_its_interval() {
        assert_eq!(default_max_live_allocs(0), DEFAULT_MAX_LIVE_ALLOCS, "exact mode keeps the default");
        assert_eq!(default_max_live_allocs(512 << 10), 131_072, "64 GiB / 512 KiB");
        assert_eq!(default_max_live_allocs(1_000_000), 131_072, "68,719 rounded up to a power of two");
        assert_eq!(
            default_max_live_allocs(4 << 10),
            DEFAULT_MAX_LIVE_ALLOCS,
            "never above the exact default"
        );
        assert_eq!(default_max_live_allocs(1), DEFAULT_MAX_LIVE_ALLOCS);
        assert_eq!(
            default_max_live_allocs(MAX_SAMPLE_BYTES),
            SAMPLED_MIN_LIVE_ALLOCS,
            "never below the least"
        );
        // Room for the cover: the expected number of recorded blocks with that much outstanding.
        for r in [1000, 4096, 65_536, 524_288, 3 << 20, MAX_SAMPLE_BYTES] {
            let expected_blocks = SAMPLED_COVER_BYTES.div_ceil(r).min(DEFAULT_MAX_LIVE_ALLOCS as u64);
            assert!(default_max_live_allocs(r) as u64 >= expected_blocks, "R = {r}");
        }
    }

    #[test]
    fn table_is_one_minus_exp() {
        let t = probability_table();
        assert_eq!(t.len(), TABLE_LEN as usize);
        assert_eq!(t[0], 0);
        let at_one = t[STEPS as usize] as f64 / 4_294_967_296.0;
        assert!((at_one - (1.0 - (-1.0f64).exp())).abs() < 1e-9);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "increasing");
    }

    #[test]
    fn sizes_parse_with_units_and_bad_ones_say_why() {
        assert_eq!(parse_sample_bytes("524288"), Ok(524288));
        assert_eq!(parse_sample_bytes("512KiB"), Ok(524288));
        assert_eq!(parse_sample_bytes("512k"), Ok(524288));
        assert_eq!(parse_sample_bytes("4M"), Ok(4 << 20));
        assert!(parse_sample_bytes("0").unwrap_err().contains("between"));
        assert!(parse_sample_bytes("1GiB").unwrap_err().contains("unit"));
        assert!(parse_sample_bytes("lots").unwrap_err().contains("byte count"));
        assert!(parse_sample_bytes("1024M").unwrap_err().contains("between"));
    }

    /// A deterministic program's allocations, sampled the way the kernel samples them (its
    /// own arithmetic, a seeded generator for bpf_get_prandom_u32): over many seeds the
    /// estimates center on the truth, and their spread matches the variance the method
    /// predicts, sum of s^2 (1-p)/p.
    #[test]
    fn estimates_fall_within_the_statistical_bounds() {
        let t = probability_table();
        let r = 64 * 1024;
        let sizes: Vec<u64> = (0..20_000u64).map(|i| 16 + (i * 7919) % 4000).collect();
        let truth: u64 = sizes.iter().sum();
        let variance: f64 = sizes
            .iter()
            .map(|&s| {
                let p = 1.0 - (-(s as f64) / r as f64).exp();
                (s as f64).powi(2) * (1.0 - p) / p
            })
            .sum();
        let sd = variance.sqrt();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u32
        };
        let runs = 200;
        let mut estimates = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..runs {
            let (mut bytes, mut count) = (0u64, 0u64);
            for &s in &sizes {
                if let Some(w) = decide(s, r, |k| t.get(k as usize).copied(), next()) {
                    bytes += w.bytes;
                    count += w.count;
                }
            }
            estimates.push(bytes as f64);
            counts.push(count as f64 / COUNT_ONE as f64);
        }
        let mean = estimates.iter().sum::<f64>() / runs as f64;
        // The mean of 200 runs lies within 4 standard errors of the truth.
        assert!(
            (mean - truth as f64).abs() < 4.0 * sd / (runs as f64).sqrt(),
            "mean {mean} truth {truth} sd {sd}"
        );
        // Every single run lies within 5 predicted standard deviations.
        for e in &estimates {
            assert!((e - truth as f64).abs() < 5.0 * sd, "estimate {e} truth {truth} sd {sd}");
        }
        let observed_sd =
            (estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (runs - 1) as f64).sqrt();
        assert!(
            observed_sd > 0.7 * sd && observed_sd < 1.3 * sd,
            "observed sd {observed_sd}, predicted {sd}"
        );
        let mean_count = counts.iter().sum::<f64>() / runs as f64;
        assert!((mean_count - sizes.len() as f64).abs() / (sizes.len() as f64) < 0.05, "count {mean_count}");
    }
}
