//! Differential privacy parameters of aggregate-only columns (`policy-model.md` §5): `@epsilon`
//! and `@bounds` on `aggregate` permits, and `Scenario.epsilon_budget`.
//!
//! Amounts of ε are whole millionths ([`Epsilon`]), so that budgets add up exactly and a
//! [`crate::Grant`] stays comparable.

use std::fmt;

/// The largest ε a permit or a budget may name: beyond it noise protects nothing.
pub const MAX_EPSILON: Epsilon = Epsilon(100_000_000);

/// An amount of privacy loss, in millionths of ε.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Epsilon(pub u64);

impl Epsilon {
    /// `text` as ε: a positive decimal of at most six places, at most [`MAX_EPSILON`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let e = Self::parse_amount(text)?;
        if e > MAX_EPSILON {
            return Err(format!("ε may be at most {MAX_EPSILON}"));
        }
        Ok(e)
    }

    /// `text` as an amount of ε (a budget): a positive decimal of at most six places.
    pub fn parse_amount(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let ok = !whole.is_empty()
            && whole.len() <= 12
            && whole.bytes().all(|b| b.is_ascii_digit())
            && frac.len() <= 6
            && frac.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(format!(
                "`{text}` is not a decimal of at most six places, e.g. \"0.5\""
            ));
        }
        let micros = whole.parse::<u64>().unwrap_or(0) * 1_000_000
            + format!("{frac:0<6}").parse::<u64>().unwrap_or(0);
        let e = Epsilon(micros);
        if e.0 == 0 {
            return Err("ε must be greater than 0".into());
        }
        Ok(e)
    }

    /// ε as a number.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// ε from a number, rounded up to a millionth (spending never rounds down).
    pub fn from_f64_up(x: f64) -> Self {
        Epsilon((x * 1e6).ceil().max(0.0) as u64)
    }
}

impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, r) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if r == 0 {
            write!(f, "{w}")
        } else {
            let frac = format!("{r:06}");
            write!(f, "{w}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// The clamp of each subject's contribution to one group of a sum or an average (`@bounds`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Lower bound, finite.
    pub lo: f64,
    /// Upper bound, finite, above `lo`.
    pub hi: f64,
}

// Parsed bounds are finite, so equality is total.
impl Eq for Bounds {}

impl Bounds {
    /// `"lo,hi"` with finite numbers, lo < hi.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let nums: Option<Vec<f64>> = match parts.as_slice() {
            [a, b] => a
                .parse::<f64>()
                .ok()
                .zip(b.parse::<f64>().ok())
                .map(|(a, b)| vec![a, b]),
            _ => None,
        };
        match nums.as_deref() {
            Some([lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi && hi.abs().max(lo.abs()) < 1e15 => {
                Ok(Bounds { lo: *lo, hi: *hi })
            }
            _ => Err(format!(
                "`{text}` is not \"lo,hi\" with finite numbers lo < hi (at most 1e15), e.g. \"0,100000\""
            )),
        }
    }

    /// The largest change one subject can make to a clamped sum.
    pub fn sensitivity(&self) -> f64 {
        self.lo.abs().max(self.hi.abs())
    }

    /// The narrowest of two clamps, if they overlap.
    pub fn intersect(self, other: Bounds) -> Option<Bounds> {
        let (lo, hi) = (self.lo.max(other.lo), self.hi.min(other.hi));
        (lo < hi).then_some(Bounds { lo, hi })
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.lo, self.hi)
    }
}

/// How an aggregate-only column is released with differential privacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privacy {
    /// What one query releasing the column spends (`@epsilon`).
    pub epsilon: Epsilon,
    /// The clamp of sums and averages over the column (`@bounds`); without it they are refused.
    pub bounds: Option<Bounds>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_parses_exact_decimals() {
        assert_eq!(Epsilon::parse("1").unwrap(), Epsilon(1_000_000));
        assert_eq!(Epsilon::parse("0.1").unwrap(), Epsilon(100_000));
        assert_eq!(Epsilon::parse("0.000001").unwrap(), Epsilon(1));
        assert_eq!(Epsilon::parse("0.25").unwrap().to_string(), "0.25");
        for bad in [
            "0",
            "0.0",
            "-1",
            "1e-3",
            "abc",
            "",
            ".5",
            "0.0000001",
            "101",
            "NaN",
        ] {
            assert!(Epsilon::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Epsilon::from_f64_up(0.1000001), Epsilon(100_001));
    }

    #[test]
    fn bounds_parse_and_intersect() {
        let b = Bounds::parse("0, 100000").unwrap();
        assert_eq!((b.lo, b.hi), (0.0, 100000.0));
        assert_eq!(Bounds::parse("-5,2").unwrap().sensitivity(), 5.0);
        for bad in [
            "1,1", "2,1", "0", "0,inf", "NaN,1", "a,b", "0,1,2", "0,1e16",
        ] {
            assert!(Bounds::parse(bad).is_err(), "{bad}");
        }
        let c = Bounds::parse("50,200000").unwrap();
        assert_eq!(
            b.intersect(c),
            Some(Bounds {
                lo: 50.0,
                hi: 100000.0
            })
        );
        assert_eq!(b.intersect(Bounds::parse("200000,300000").unwrap()), None);
    }
}
