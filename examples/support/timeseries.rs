//! A small partitioned collection for the usage guide's second example
//! (shared by `dask_client` and `async_dask_client`): a synthetic timeseries
//! whose partitions are built on the workers, summarised there, and combined
//! into a `describe()`-like table (count, mean, std, min, quartiles, max) as
//! pandas and Dask print it.
//!
//! Only the per-partition statistics travel back to the caller; the rows
//! never leave the worker that generated them. Quartiles come from merged
//! per-partition percentiles (101 points each), approximate as Dask's are.

use std::fmt;

use flowrun::dask::Client;
use flowrun::{task, TaskError};
use serde::{Deserialize, Serialize};

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
fn days_from_civil(date: &str) -> Result<i64, String> {
    let parts: Vec<&str> = date.trim().split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(format!("{date:?} is not a YYYY-MM-DD date"));
    };
    let (y, m, d): (i64, i64, i64) = (
        y.parse().map_err(|_| format!("bad year in {date:?}"))?,
        m.parse().map_err(|_| format!("bad month in {date:?}"))?,
        d.parse().map_err(|_| format!("bad day in {date:?}"))?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(format!("{date:?} is not a valid date"));
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(era * 146_097 + doe - 719_468)
}

/// A synthetic timeseries like `dask.datasets.timeseries`: a row per
/// `freq` between two dates, with an integer column `id` (around 1000) and
/// two uniform columns `x`, `y` in [-1, 1), split into partitions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timeseries {
    start_s: i64,
    end_s: i64,
    partition_s: i64,
    freq_s: i64,
    seed: u64,
}

impl Timeseries {
    /// Rows from `start` (inclusive) to `end` (exclusive), `YYYY-MM-DD`;
    /// by default one row per second and one partition per 4 weeks.
    pub(crate) fn new(start: &str, end: &str) -> Result<Timeseries, String> {
        let start_s = days_from_civil(start)? * 86_400;
        let end_s = days_from_civil(end)? * 86_400;
        if end_s <= start_s {
            return Err(format!("the end {end} is not after the start {start}"));
        }
        Ok(Timeseries {
            start_s,
            end_s,
            partition_s: 28 * 86_400,
            freq_s: 1,
            seed: 42,
        })
    }

    /// Days per partition (Dask's `partition_freq`).
    pub(crate) fn partition_days(mut self, days: i64) -> Self {
        self.partition_s = days.max(1) * 86_400;
        self
    }

    /// Seconds between rows (Dask's `freq`).
    pub(crate) fn freq_seconds(mut self, seconds: i64) -> Self {
        self.freq_s = seconds.max(1);
        self
    }

    /// `(start, end)` in seconds since the epoch, one per partition.
    pub(crate) fn partitions(&self) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut s = self.start_s;
        while s < self.end_s {
            let e = (s + self.partition_s).min(self.end_s);
            out.push((s, e));
            s = e;
        }
        out
    }

    /// Builds and summarises every partition on the cluster, then combines
    /// the summaries.
    pub(crate) fn describe(&self, client: &Client) -> Result<Describe, TaskError> {
        let futures = client.map(
            &describe_partition,
            self.partitions()
                .into_iter()
                .enumerate()
                .map(|(i, (s, e))| (s, e, self.freq_s, self.seed.wrapping_add(i as u64))),
        );
        let parts = client.gather(futures)?;
        Ok(Describe::combine(&parts))
    }
}

/// Statistics of one column of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ColumnStats {
    /// Rows.
    pub(crate) count: u64,
    /// Mean.
    pub(crate) mean: f64,
    /// Sum of squared deviations from the mean.
    pub(crate) m2: f64,
    /// Smallest value.
    pub(crate) min: f64,
    /// Largest value.
    pub(crate) max: f64,
    /// The 0th, 1st, ..., 100th percentiles.
    pub(crate) percentiles: Vec<f64>,
}

impl ColumnStats {
    fn of(values: &mut [f64]) -> ColumnStats {
        let count = values.len() as u64;
        let mut mean = 0.0;
        let mut m2 = 0.0;
        for (i, v) in values.iter().enumerate() {
            let delta = v - mean;
            mean += delta / (i + 1) as f64;
            m2 += delta * (v - mean);
        }
        values.sort_unstable_by(f64::total_cmp);
        let percentiles = if values.is_empty() {
            Vec::new()
        } else {
            (0..=100)
                .map(|p| values[(p * (values.len() - 1)) / 100])
                .collect()
        };
        ColumnStats {
            count,
            mean,
            m2,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            percentiles,
        }
    }
}

/// Builds one partition of a [`Timeseries`] and summarises its columns `id`,
/// `x`, `y`, on the worker that runs it.
#[task]
pub(crate) fn describe_partition(
    start_s: i64,
    end_s: i64,
    freq_s: i64,
    seed: u64,
) -> Vec<ColumnStats> {
    let rows = ((end_s - start_s) / freq_s.max(1)).max(0) as usize;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut id = Vec::with_capacity(rows);
    let mut x = Vec::with_capacity(rows);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        // Around 1000, as Dask's Poisson-distributed id column.
        let noise: f64 = (0..4).map(|_| rng.f64()).sum::<f64>() - 2.0;
        id.push((1000.0 + noise * 55.0).round());
        x.push(rng.f64() * 2.0 - 1.0);
        y.push(rng.f64() * 2.0 - 1.0);
    }
    vec![
        ColumnStats::of(&mut id),
        ColumnStats::of(&mut x),
        ColumnStats::of(&mut y),
    ]
}

/// Summary statistics of the columns of a collection, like `describe()`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Describe {
    /// Column names.
    pub(crate) columns: Vec<&'static str>,
    /// Per column: count, mean, std, min, 25%, 50%, 75%, max.
    pub(crate) stats: Vec<[f64; 8]>,
}

impl Describe {
    /// Combines per-partition statistics (each a list of columns).
    pub(crate) fn combine(parts: &[Vec<ColumnStats>]) -> Describe {
        let columns = vec!["id", "x", "y"];
        let ncols = parts.first().map_or(0, Vec::len);
        let stats = (0..ncols)
            .map(|c| {
                let col: Vec<&ColumnStats> = parts
                    .iter()
                    .map(|p| &p[c])
                    .filter(|s| s.count > 0)
                    .collect();
                let count: u64 = col.iter().map(|s| s.count).sum();
                // Chan et al.'s parallel combination of means and variances.
                let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
                for s in &col {
                    let nb = s.count as f64;
                    let delta = s.mean - mean;
                    let total = n + nb;
                    mean += delta * nb / total;
                    m2 += s.m2 + delta * delta * n * nb / total;
                    n = total;
                }
                let std = if n > 1.0 {
                    (m2 / (n - 1.0)).sqrt()
                } else {
                    f64::NAN
                };
                let min = col.iter().map(|s| s.min).fold(f64::INFINITY, f64::min);
                let max = col.iter().map(|s| s.max).fold(f64::NEG_INFINITY, f64::max);
                let q = |p: f64| merged_quantile(&col, p);
                [count as f64, mean, std, min, q(0.25), q(0.5), q(0.75), max]
            })
            .collect();
        Describe { columns, stats }
    }
}

/// The value below which a fraction `q` of all rows lie, from per-partition
/// percentiles: each partition's distribution is taken as piecewise linear
/// through its percentiles, weighted by its row count.
fn merged_quantile(parts: &[&ColumnStats], q: f64) -> f64 {
    let total: f64 = parts.iter().map(|s| s.count as f64).sum();
    if total == 0.0 {
        return f64::NAN;
    }
    let cdf = |v: f64| -> f64 {
        parts
            .iter()
            .map(|s| {
                let p = &s.percentiles;
                let below = match p.iter().position(|x| *x > v) {
                    None => 1.0,
                    Some(0) => 0.0,
                    Some(i) => {
                        let (a, b) = (p[i - 1], p[i]);
                        let frac = if b > a { (v - a) / (b - a) } else { 1.0 };
                        ((i - 1) as f64 + frac) / 100.0
                    }
                };
                below * s.count as f64
            })
            .sum::<f64>()
            / total
    };
    let mut lo = parts.iter().map(|s| s.min).fold(f64::INFINITY, f64::min);
    let mut hi = parts
        .iter()
        .map(|s| s.max)
        .fold(f64::NEG_INFINITY, f64::max);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

impl fmt::Display for Describe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<6}", "")?;
        for c in &self.columns {
            write!(f, "{c:>16}")?;
        }
        writeln!(f)?;
        for (i, label) in ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]
            .iter()
            .enumerate()
        {
            write!(f, "{label:<6}")?;
            for col in &self.stats {
                write!(f, "{:>16.6}", col[i])?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_to_days_since_the_epoch() {
        assert_eq!(days_from_civil("1970-01-01").unwrap(), 0);
        assert_eq!(days_from_civil("2000-01-01").unwrap(), 10_957);
        assert_eq!(days_from_civil("2001-01-01").unwrap(), 11_323);
        assert!(days_from_civil("2000-13-01").is_err());
    }

    #[test]
    fn a_year_in_four_week_partitions_has_fourteen_of_them() {
        let ts = Timeseries::new("2000-01-01", "2001-01-01").unwrap();
        let parts = ts.partitions();
        assert_eq!(parts.len(), 14);
        assert_eq!(parts.last().unwrap().1 - parts[0].0, 366 * 86_400);
    }

    #[test]
    fn combined_statistics_match_those_of_all_rows() {
        let mut rng = fastrand::Rng::with_seed(7);
        let all: Vec<f64> = (0..30_000).map(|_| rng.f64() * 10.0 - 3.0).collect();
        let parts: Vec<Vec<ColumnStats>> = all
            .chunks(7_000)
            .map(|c| vec![ColumnStats::of(&mut c.to_vec())])
            .collect();
        let combined = Describe::combine(&parts).stats[0];
        let whole = ColumnStats::of(&mut all.clone());
        let std = (whole.m2 / (all.len() as f64 - 1.0)).sqrt();
        assert_eq!(combined[0], 30_000.0);
        assert!((combined[1] - whole.mean).abs() < 1e-9);
        assert!((combined[2] - std).abs() < 1e-9);
        assert_eq!(combined[3], whole.min);
        assert_eq!(combined[7], whole.max);
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        for (i, q) in [(4, 0.25), (5, 0.5), (6, 0.75)] {
            let exact = sorted[(q * (sorted.len() - 1) as f64) as usize];
            assert!(
                (combined[i] - exact).abs() < 0.1,
                "quantile {q}: {} vs {exact}",
                combined[i]
            );
        }
    }
}
