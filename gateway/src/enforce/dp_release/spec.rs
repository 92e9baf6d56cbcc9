//! What a release measures and how it is calibrated: the measures, their bounds, and OpenDP's
//! Laplace mechanisms and threshold.

use super::*;

/// How many groups one subject may contribute to (the others of its groups are dropped).
pub(crate) const GROUPS_PER_SUBJECT: u32 = 1;

/// The chance that a group of one subject is released by the threshold.
pub(crate) const DELTA: f64 = 1e-6;

/// What one output column after the keys releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Measure {
    /// `count(*)`: the subjects in the group.
    Subjects,
    /// `count(col)`: the subjects with a value; `count` names their per-subject count.
    NonNull { count: String },
    /// `sum(col)`: each subject's total clamped to `[lo, hi]`.
    Sum {
        sum: String,
        integer: bool,
        lo: f64,
        hi: f64,
    },
    /// `avg(col)`: the mean over subjects of each subject's mean clamped to `[lo, hi]`.
    Avg {
        sum: String,
        count: String,
        lo: f64,
        hi: f64,
    },
}

impl Measure {
    /// The type of the released column.
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Measure::Subjects | Measure::NonNull { .. } => DataType::Int64,
            Measure::Sum { integer: true, .. } => DataType::Int64,
            Measure::Sum { .. } | Measure::Avg { .. } => DataType::Float64,
        }
    }
}

/// Everything the release needs, as planned (the codec and `explain` show it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DpSpec {
    /// The table whose subjects are protected, for messages.
    pub(crate) table: String,
    /// The first `keys` input columns are the group keys.
    pub(crate) keys: usize,
    /// The input column holding the subject key.
    pub(crate) subject: String,
    /// One per output column after the keys.
    pub(crate) outputs: Vec<Measure>,
    /// What one run spends.
    pub(crate) epsilon: Epsilon,
    /// The smallest threshold, from `@min_group`.
    pub(crate) min_group: u64,
}

/// One noisy measurement: what it measures, its scale and the ε OpenDP's privacy map gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slot {
    pub(crate) scale: f64,
    pub(crate) epsilon: f64,
}

/// The calibrated mechanism: per output column its slot(s), the subjects' slot and threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Calibration {
    /// The subject count's slot (used by `count(*)` and the threshold), if measured.
    pub(super) subjects: Option<Slot>,
    /// Per output column: its slots (two for `avg`; none for `count(*)`, which is `subjects`).
    pub(super) outputs: Vec<Vec<Slot>>,
    /// Groups are released when their noisy subject count reaches this; None: no GROUP BY.
    pub(super) threshold: Option<i64>,
    /// δ of the threshold, from OpenDP's privacy map.
    pub(super) delta: f64,
}

pub(super) fn dp_err(e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("differential privacy: {e}"))
}

/// The integer clamp of `[lo, hi]` for integer columns.
pub(super) fn integer_bounds(lo: f64, hi: f64) -> Result<(i64, i64)> {
    let (l, h) = (lo.ceil() as i64, hi.floor() as i64);
    if l >= h {
        return Err(dp_err(format!(
            "@bounds(\"{lo},{hi}\") holds no two whole numbers for an integer column"
        )));
    }
    Ok((l, h))
}

/// The smallest scale from `sensitivity / epsilon` up whose ε by OpenDP's privacy map
/// (`spent(scale)`) is at most `epsilon`.
pub(super) fn calibrated(
    sensitivity: f64,
    epsilon: f64,
    spent: impl Fn(f64) -> Result<f64>,
) -> Result<Slot> {
    let mut scale = sensitivity / epsilon;
    for _ in 0..64 {
        let e = spent(scale)?;
        if e <= epsilon {
            return Ok(Slot { scale, epsilon: e });
        }
        scale *= 1.0 + 1e-6_f64.max(e / epsilon - 1.0);
    }
    Err(dp_err("no Laplace scale meets the budget"))
}

/// Laplace noise on floats for a sum that one subject changes by at most `sensitivity`.
pub(super) fn laplace_slot_f64(sensitivity: f64, epsilon: f64) -> Result<Slot> {
    calibrated(sensitivity, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            L1Distance::<f64>::default(),
            scale,
            None,
        )
        .and_then(|m| m.map(&sensitivity))
        .map_err(dp_err)
    })
}

/// Discrete Laplace noise on integers for a count or sum one subject changes by `sensitivity`.
pub(super) fn laplace_slot_i64(sensitivity: i64, epsilon: f64) -> Result<Slot> {
    calibrated(sensitivity as f64, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L1Distance::<i64>::default(),
            scale,
            None,
        )
        .and_then(|m| m.map(&sensitivity))
        .map_err(dp_err)
    })
}

/// OpenDP's Laplace threshold over (group index → subject count).
pub(super) type ThresholdMeasurement = opendp::core::Measurement<
    MapDomain<AtomDomain<u64>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<u64, i64>,
>;

pub(super) fn threshold_measurement(scale: f64, threshold: i64) -> Result<ThresholdMeasurement> {
    make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
        MapDomain::new(AtomDomain::<u64>::default(), AtomDomain::<i64>::default()),
        L0PInfDistance(AbsoluteDistance::<i64>::default()),
        scale,
        threshold,
        None,
    )
    .map_err(dp_err)
}

impl DpSpec {
    /// Splits ε evenly over the measurements and calibrates each with OpenDP's privacy maps.
    pub(crate) fn calibrate(&self) -> Result<Calibration> {
        let grouped = self.keys > 0;
        let measure_subjects = grouped || self.outputs.contains(&Measure::Subjects);
        let slots: usize = usize::from(measure_subjects)
            + self
                .outputs
                .iter()
                .map(|m| match m {
                    Measure::Subjects => 0,
                    Measure::NonNull { .. } | Measure::Sum { .. } => 1,
                    Measure::Avg { .. } => 2,
                })
                .sum::<usize>();
        if slots == 0 {
            return Err(dp_err("the release measures nothing"));
        }
        let share = self.epsilon.as_f64() / slots as f64;
        let g = GROUPS_PER_SUBJECT as i64;
        let mut threshold = None;
        let mut delta = 0.0;
        let subjects = if !measure_subjects {
            None
        } else if grouped {
            // Laplace threshold: ε and δ from OpenDP's map for a subject in `g` groups.
            let scale = g as f64 / share;
            let mut tau = (1.0 + scale * (1.0 / (2.0 * DELTA)).ln()).ceil() as i64;
            tau = tau.max(self.min_group as i64).max(1);
            let mut found = None;
            for _ in 0..200 {
                let m = threshold_measurement(scale, tau)?;
                let (e, d) = m.map(&(GROUPS_PER_SUBJECT, g, 1)).map_err(dp_err)?;
                if e <= share * (1.0 + 1e-9) && d <= DELTA {
                    found = Some((e, d));
                    break;
                }
                tau += (scale.ceil() as i64).max(1);
            }
            let (e, d) = found.ok_or_else(|| dp_err("no threshold meets δ"))?;
            threshold = Some(tau);
            delta = d;
            Some(Slot { scale, epsilon: e })
        } else {
            Some(laplace_slot_i64(g, share)?)
        };
        let outputs = self
            .outputs
            .iter()
            .map(|m| {
                Ok(match m {
                    Measure::Subjects => vec![],
                    Measure::NonNull { .. } => vec![laplace_slot_i64(g, share)?],
                    Measure::Sum {
                        integer: true,
                        lo,
                        hi,
                        ..
                    } => {
                        let (l, h) = integer_bounds(*lo, *hi)?;
                        vec![laplace_slot_i64(g * l.abs().max(h.abs()), share)?]
                    }
                    Measure::Sum { lo, hi, .. } => {
                        vec![laplace_slot_f64(g as f64 * lo.abs().max(hi.abs()), share)?]
                    }
                    Measure::Avg { lo, hi, .. } => vec![
                        laplace_slot_f64(g as f64 * lo.abs().max(hi.abs()), share)?,
                        laplace_slot_i64(g, share)?,
                    ],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Calibration {
            subjects,
            outputs,
            threshold,
            delta,
        })
    }

    /// The released schema's field for output `i` (after the keys), named as the user's
    /// aggregate, with what it spent and its noise in the metadata.
    pub(crate) fn output_field(&self, cal: &Calibration, i: usize, name: &str) -> Field {
        let m = &self.outputs[i];
        let slots: Vec<&Slot> = match m {
            Measure::Subjects => cal.subjects.iter().collect(),
            _ => cal.outputs[i].iter().collect(),
        };
        let eps: f64 = slots.iter().map(|s| s.epsilon).sum();
        let scales: Vec<String> = slots.iter().map(|s| format!("{}", s.scale)).collect();
        Field::new(name, m.data_type(), true).with_metadata(
            [
                (EPSILON_KEY.to_string(), format!("{eps}")),
                (SCALE_KEY.to_string(), scales.join(",")),
            ]
            .into(),
        )
    }
}

impl fmt::Display for DpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ε={} over {} subjects", self.epsilon, self.table)?;
        match self.calibrate() {
            Ok(c) => {
                if let Some(s) = &c.subjects {
                    write!(f, ", subjects: Laplace scale {}", s.scale)?;
                }
                if let Some(t) = c.threshold {
                    write!(
                        f,
                        ", groups released at noisy count >= {t} (δ={:e})",
                        c.delta
                    )?;
                }
                for (m, slots) in self.outputs.iter().zip(&c.outputs) {
                    let scales: Vec<String> = slots.iter().map(|s| s.scale.to_string()).collect();
                    match m {
                        Measure::Subjects => {}
                        Measure::NonNull { .. } => write!(f, ", count: scale {}", scales[0])?,
                        Measure::Sum { lo, hi, .. } => {
                            write!(f, ", sum clamped to [{lo}, {hi}]: scale {}", scales[0])?
                        }
                        Measure::Avg { lo, hi, .. } => write!(
                            f,
                            ", avg clamped to [{lo}, {hi}]: scales {}",
                            scales.join("/")
                        )?,
                    }
                }
                Ok(())
            }
            Err(e) => write!(f, " ({e})"),
        }
    }
}
