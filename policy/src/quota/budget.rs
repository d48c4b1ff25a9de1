//! Monthly spending limits, and the UTC calendar arithmetic they reset by.
//!
//! A tenant may have a monthly budget in money, in GPU-seconds, or both. The caller keeps
//! the month-to-date [`Spend`] (the policy crate holds no state) and asks
//! [`MonthlyBudget::check`] before admitting a request, with an estimate of what the request
//! will cost. Budgets reset at 00:00:00 UTC on the first day of each month.
//!
//! The calendar helpers take and return Unix seconds (UTC, leap seconds ignored as Unix time
//! does) and use the proleptic Gregorian calendar, so they are exact for any date.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::QuotaError;

const SECS_PER_DAY: i64 = 86_400;

/// What a tenant may spend per calendar month (UTC). `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlyBudget {
    /// Money per month, in the tenant's billing currency.
    pub money: Option<f64>,
    /// GPU-seconds per month.
    pub gpu_seconds: Option<f64>,
}

/// An amount spent, or estimated to be spent, in both units a budget can limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spend {
    /// Money, in the tenant's billing currency.
    pub money: f64,
    /// GPU-seconds.
    pub gpu_seconds: f64,
}

/// Which limit of a [`MonthlyBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    /// The money limit.
    Money,
    /// The GPU-seconds limit.
    GpuSeconds,
}

impl fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetKind::Money => "money",
            BudgetKind::GpuSeconds => "GPU-seconds",
        })
    }
}

/// A request refused because it would go over a monthly budget.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "monthly {kind} budget of {limit} reached: {spent} spent this month and this request is \
     estimated at {estimate}; the budget resets at {} (in {retry_after_secs} s)",
    Utc(.resets_at)
)]
pub struct BudgetExceeded {
    /// Which limit would be exceeded.
    pub kind: BudgetKind,
    /// That limit.
    pub limit: f64,
    /// What was spent of it this month, before this request.
    pub spent: f64,
    /// What this request was estimated to cost in the same unit.
    pub estimate: f64,
    /// When the budget resets: the start of next month, Unix seconds (UTC).
    pub resets_at: i64,
    /// Seconds from the check until the reset, at least 1: the `Retry-After` for the refusal.
    pub retry_after_secs: u64,
}

impl MonthlyBudget {
    /// A budget with no limits.
    pub const UNLIMITED: MonthlyBudget = MonthlyBudget {
        money: None,
        gpu_seconds: None,
    };

    /// Checks that every limit set is a finite number of at least 0.
    ///
    /// # Errors
    ///
    /// [`QuotaError::InvalidBudget`] naming the first bad limit.
    pub fn validate(&self) -> Result<(), QuotaError> {
        for (kind, limit) in self.limits() {
            if let Some(value) = limit
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(QuotaError::InvalidBudget { kind, value });
            }
        }
        Ok(())
    }

    /// Whether a request estimated at `estimate` fits, given `month_to_date` already spent,
    /// at `now_unix_secs` (used only to say when the budget resets).
    ///
    /// A limit admits the request when what was spent is below the limit and spent plus
    /// estimate is at most the limit. So a request that lands exactly on the limit passes,
    /// and once spending has reached the limit every request is refused, even one estimated
    /// at zero; a limit of 0 refuses everything. A negative or NaN estimate counts as zero; a
    /// NaN amount spent counts as over the limit. When both limits would be exceeded the
    /// money limit is reported.
    ///
    /// # Errors
    ///
    /// [`BudgetExceeded`] naming the limit, the spend, and when the budget resets.
    pub fn check(
        &self,
        month_to_date: Spend,
        estimate: Spend,
        now_unix_secs: i64,
    ) -> Result<(), BudgetExceeded> {
        let spends = [
            (month_to_date.money, estimate.money),
            (month_to_date.gpu_seconds, estimate.gpu_seconds),
        ];
        for ((kind, limit), (spent, estimate)) in self.limits().into_iter().zip(spends) {
            let Some(limit) = limit else { continue };
            let estimate = estimate.max(0.0);
            // Written so that a NaN spend fails both comparisons and is refused.
            let fits = spent < limit && spent + estimate <= limit;
            if !fits {
                let resets_at = next_month_start(now_unix_secs);
                return Err(BudgetExceeded {
                    kind,
                    limit,
                    spent,
                    estimate,
                    resets_at,
                    retry_after_secs: seconds_until_next_month(now_unix_secs),
                });
            }
        }
        Ok(())
    }

    fn limits(&self) -> [(BudgetKind, Option<f64>); 2] {
        [
            (BudgetKind::Money, self.money),
            (BudgetKind::GpuSeconds, self.gpu_seconds),
        ]
    }
}

/// The start (00:00:00 UTC on the 1st) of the month containing `unix_secs`.
///
/// ```
/// # use policy::quota::month_start;
/// // 2024-02-29T12:00:00Z → 2024-02-01T00:00:00Z
/// assert_eq!(month_start(1_709_208_000), 1_706_745_600);
/// ```
pub fn month_start(unix_secs: i64) -> i64 {
    let (year, month, _) = civil_from_days(unix_secs.div_euclid(SECS_PER_DAY));
    days_from_civil(year, month, 1).saturating_mul(SECS_PER_DAY)
}

/// The start (00:00:00 UTC on the 1st) of the month after the one containing `unix_secs`:
/// when a monthly budget resets. Always later than `unix_secs` (saturating at `i64::MAX`).
///
/// ```
/// # use policy::quota::next_month_start;
/// // 2023-12-31T23:59:59Z → 2024-01-01T00:00:00Z
/// assert_eq!(next_month_start(1_704_067_199), 1_704_067_200);
/// ```
pub fn next_month_start(unix_secs: i64) -> i64 {
    let (year, month, _) = civil_from_days(unix_secs.div_euclid(SECS_PER_DAY));
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(year, month, 1).saturating_mul(SECS_PER_DAY)
}

/// Seconds from `unix_secs` until the next month starts, at least 1: the `Retry-After` for a
/// request refused by a monthly budget.
pub fn seconds_until_next_month(unix_secs: i64) -> u64 {
    let wait = next_month_start(unix_secs).saturating_sub(unix_secs);
    u64::try_from(wait).unwrap_or(0).max(1)
}

/// Days before 0000-03-01 in the day count that starts at 1970-01-01. Counting years from
/// March puts the leap day last, so a year's day-of-year never depends on whether it is leap.
const DAYS_0000_03_01_TO_EPOCH: i64 = 719_468;
/// Days in a 400-year Gregorian cycle.
const DAYS_PER_400_YEARS: i64 = 146_097;

/// Year, month (1–12) and day (1–31) of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + DAYS_0000_03_01_TO_EPOCH;
    let cycle = shifted.div_euclid(DAYS_PER_400_YEARS);
    let day_of_cycle = shifted.rem_euclid(DAYS_PER_400_YEARS); // 0..=146_096
    // Undo the leap days (every 4th year, except every 100th, except the 400th) to find the
    // year of the cycle; the last day of the cycle belongs to year 399.
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1_460 + day_of_cycle / 36_524
        - day_of_cycle / (DAYS_PER_400_YEARS - 1))
        / 365; // 0..=399
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100); // 0..=365
    // Months from March have lengths 31 30 31 30 31 | 31 30 31 30 31 | 31 29-or-28: five
    // months take 153 days, which this linear formula captures.
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let (month, year_shift) = if month_from_march < 10 {
        (month_from_march + 3, 0)
    } else {
        (month_from_march - 9, 1)
    };
    let year = cycle * 400 + year_of_cycle + year_shift;
    // month is 1..=12 and day 1..=31, so both fit.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days from 1970-01-01 to the given date; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    // Years start in March, so January and February belong to the previous year.
    let year = if month <= 2 { year - 1 } else { year };
    let cycle = year.div_euclid(400);
    let year_of_cycle = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_cycle = 365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    cycle * DAYS_PER_400_YEARS + day_of_cycle - DAYS_0000_03_01_TO_EPOCH
}

/// Formats Unix seconds as an RFC 3339 UTC timestamp, for error messages.
struct Utc<'a>(&'a i64);

impl fmt::Display for Utc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = *self.0;
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let of_day = secs.rem_euclid(SECS_PER_DAY);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            of_day / 3_600,
            of_day / 60 % 60,
            of_day % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_every_day_of_800_years() {
        // 1600-03-01 .. 2400-03-01 covers two full 400-year cycles, including 1700, 1800,
        // 1900, 2100, 2200, 2300 (not leap) and 2000 (leap).
        let first = days_from_civil(1600, 3, 1);
        let last = days_from_civil(2400, 3, 1);
        assert_eq!(last - first, 2 * DAYS_PER_400_YEARS);
        let mut expected = (1600_i64, 3_u32, 1_u32);
        for days in first..=last {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), days);
            let (y, m, d) = expected;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn epoch_and_negative_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(Utc(&1_709_251_200).to_string(), "2024-03-01T00:00:00Z");
        assert_eq!(Utc(&1_709_208_000).to_string(), "2024-02-29T12:00:00Z");
        assert_eq!(Utc(&-1).to_string(), "1969-12-31T23:59:59Z");
    }
}
