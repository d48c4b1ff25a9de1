//! Money and units as exact integers: billionths ([`Nanos`]). Every charge is priced once,
//! by [`charge`], where the job ran; the agent's `x-meridian-cost` header, its per-job
//! records and the control plane's ledger all carry the same integer, so their sums agree
//! to the billionth whatever order they are added in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Billionths per whole unit.
pub const NANOS_PER_UNIT: u64 = 1_000_000_000;

/// Largest amount one job may carry (units, GPU-seconds or money): a billion, so no sum of
/// realistic amounts overflows.
pub const MAX_AMOUNT: f64 = 1e9;

/// An amount in billionths: of the catalog's currency, of units of work or of GPU-seconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// `amount` rounded to the nearest billionth; negative, non-finite amounts are 0 and
    /// amounts above [`MAX_AMOUNT`] are [`MAX_AMOUNT`].
    pub fn from_amount(amount: f64) -> Self {
        if !amount.is_finite() || amount <= 0.0 {
            return Self::ZERO;
        }
        // In range, so the cast neither truncates nor saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let nanos = (amount.min(MAX_AMOUNT) * NANOS_PER_UNIT as f64).round() as u64;
        Self(nanos)
    }

    /// The amount as a float (for display and the route decision; never for sums).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_amount(self) -> f64 {
        self.0 as f64 / NANOS_PER_UNIT as f64
    }

    /// The sum, saturating at `u64::MAX`.
    #[must_use]
    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Nanos {
    fn add_assign(&mut self, other: Self) {
        *self = self.saturating_add(other);
    }
}

impl std::iter::Sum for Nanos {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Self::saturating_add)
    }
}

impl fmt::Display for Nanos {
    /// Nine decimals, e.g. `0.002000000`: exact, as the header and reports write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}",
            self.0 / NANOS_PER_UNIT,
            self.0 % NANOS_PER_UNIT
        )
    }
}

impl std::str::FromStr for Nanos {
    type Err = String;
    /// Reads a decimal with at most nine decimals, e.g. `0.002` or `0.002000000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an amount with at most 9 decimals");
        let (whole, fraction) = match s.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (s, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let fraction_ok = fraction.is_none_or(|f| digits(f) && f.len() <= 9);
        if !digits(whole) || !fraction_ok {
            return Err(bad());
        }
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let fraction: u64 = match fraction {
            None => 0,
            Some(f) => format!("{f:0<9}").parse().map_err(|_| bad())?,
        };
        whole
            .checked_mul(NANOS_PER_UNIT)
            .and_then(|n| n.checked_add(fraction))
            .map(Self)
            .ok_or_else(bad)
    }
}

/// What `units` of work cost at `price_per_unit`: the one rule every charge follows.
pub fn charge(units: f64, price_per_unit: f64) -> Nanos {
    Nanos::from_amount(units * price_per_unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_to_the_billionth_and_print_exactly() {
        assert_eq!(Nanos::from_amount(0.1).0, 100_000_000);
        assert_eq!(Nanos::from_amount(1e-10).0, 0);
        assert_eq!(Nanos::from_amount(-1.0), Nanos::ZERO);
        assert_eq!(Nanos::from_amount(f64::NAN), Nanos::ZERO);
        assert_eq!(Nanos::from_amount(1e12), Nanos::from_amount(MAX_AMOUNT));
        assert_eq!(Nanos(2_000_000).to_string(), "0.002000000");
        assert_eq!(Nanos(12_345_000_000_001).to_string(), "12345.000000001");
        for text in ["0.002000000", "12345.000000001", "7"] {
            let n: Nanos = text.parse().unwrap();
            assert_eq!(n.to_string().parse::<Nanos>().unwrap(), n);
        }
        assert_eq!("0.002".parse::<Nanos>().unwrap(), Nanos(2_000_000));
        for bad in ["", ".5", "1.", "1.0000000001", "-1", "1e3", "x"] {
            assert!(bad.parse::<Nanos>().is_err(), "{bad}");
        }
    }

    #[test]
    fn charges_follow_one_rule() {
        // 0.262144 megapixels at 0.002 per megapixel.
        assert_eq!(charge(0.262_144, 0.002), Nanos(524_288));
        assert_eq!(charge(3.0, 0.1), Nanos(300_000_000));
        let parts: Nanos = [0.1, 0.2, 0.3].iter().map(|u| charge(*u, 1.0)).sum();
        assert_eq!(parts, Nanos(600_000_000));
    }
}
