//! What a call will build, estimated from its arguments before it runs, and what values take.

use super::*;

/// Types whose values have one size: a function returning them cannot grow.
pub(crate) fn fixed_width(t: &DataType) -> bool {
    t.primitive_width().is_some() || matches!(t, DataType::Boolean | DataType::Null)
}

/// Bytes of one row's output of `name`, for each of `rows` rows, at most; and whether the bound
/// is exact (the functions that grow their input) rather than in proportion to the arguments.
pub(super) fn estimate(name: &str, args: &[ColumnarValue], rows: usize) -> (Vec<u128>, bool) {
    let size = |i: usize| Sizes::of(args.get(i), rows);
    let int = |i: usize| Ints::counts(args.get(i), rows);
    let each = |f: &dyn Fn(usize) -> u128| (0..rows).map(f).collect::<Vec<_>>();
    let exact = match name {
        "repeat" => {
            let (s, n) = (size(0), int(1));
            each(&|r| s.get(r) * n.get(r))
        }
        "lpad" | "rpad" => {
            let (s, n) = (size(0), int(1));
            each(&|r| s.get(r) + 4 * n.get(r))
        }
        "replace" => {
            let (s, from, to) = (size(0), size(1), size(2));
            each(&|r| {
                let (s, from, to) = (s.get(r), from.get(r), to.get(r));
                s + (s / from.max(1) + 1) * to
            })
        }
        "regexp_replace" => {
            // Every position may match; every `$n` may repeat the whole text.
            let (s, repl) = (size(0), size(2));
            let refs = args.get(2).map(dollars).unwrap_or(0);
            each(&|r| {
                let (s, repl) = (s.get(r), repl.get(r));
                s + (s + 1) * repl + refs * s
            })
        }
        "array_repeat" => {
            let (x, n) = (size(0), int(1));
            each(&|r| (x.get(r) + 8) * n.get(r))
        }
        "array_resize" => {
            let (a, n) = (size(0), int(1));
            let fill = if args.len() > 2 {
                size(2)
            } else {
                Sizes::Same(16)
            };
            each(&|r| a.get(r) + (fill.get(r) + 8) * n.get(r))
        }
        "array_to_string" => {
            let (a, delim) = (size(0), size(1));
            let null = if args.len() > 2 {
                size(2)
            } else {
                Sizes::Same(0)
            };
            let counts = Ints::elements(args.first(), rows);
            each(&|r| a.get(r) + counts.get(r) * (delim.get(r) + null.get(r) + 1))
        }
        "range" | "generate_series" => {
            let counts = series_lengths(args, rows);
            each(&|r| counts.get(r) * 8 + 8)
        }
        "string_to_array" => {
            let s = size(0);
            each(&|r| s.get(r) * 9 + 16)
        }
        _ => {
            // Output in proportion to the arguments (`concat`, `upper`, `translate`, `to_hex`,
            // …): four times their size covers every byte-for-character expansion.
            let sizes: Vec<Sizes> = (0..args.len()).map(size).collect();
            return (
                each(&|r| 16 + 4 * sizes.iter().map(|s| s.get(r)).sum::<u128>()),
                false,
            );
        }
    };
    (exact, true)
}

/// The most steps the calls of functions whose work grows with the product of their arguments'
/// sizes may take over one batch of one operator: a fraction of a second of one core in a
/// release build, so that they cannot hold an execution thread (which they do not give back
/// while they run) for long. 2^30 steps per call took 5.7 s in a debug build (round 19).
pub(super) const MAX_WORK: u128 = 1 << 28;

/// Steps of the functions whose work is the product of two arguments' sizes, over all rows.
pub(super) fn quadratic_work(name: &str, args: &[ColumnarValue], rows: usize) -> Option<u128> {
    let pair = |a: usize, b: usize| {
        let (x, y) = (Sizes::of(args.get(a), rows), Sizes::of(args.get(b), rows));
        Some(
            (0..rows.max(1))
                .map(|r| (x.get(r) + 1) * (y.get(r) + 1))
                .sum(),
        )
    };
    match name {
        "levenshtein" => pair(0, 1),
        "array_has_all" | "array_has_any" | "arrays_overlap" => pair(0, 1),
        _ => None,
    }
}

/// How many `$` references a replacement may expand (at most one per `$`).
pub(super) fn dollars(v: &ColumnarValue) -> u128 {
    let count = |s: &str| s.matches('$').count() as u128;
    match v {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)))
        | ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(s)))
        | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(s))) => count(s),
        ColumnarValue::Scalar(_) => 0,
        // Replacements that differ per row: assume every character may be one.
        ColumnarValue::Array(a) => Sizes::of_array(a).max(),
    }
}

/// Per-row byte sizes (or counts) of an argument.
pub(super) enum Sizes {
    Same(u128),
    Each(Vec<u128>),
}

impl Sizes {
    fn of(v: Option<&ColumnarValue>, rows: usize) -> Self {
        match v {
            None => Sizes::Same(0),
            Some(ColumnarValue::Scalar(s)) => Sizes::Same(scalar_bytes(s)),
            Some(ColumnarValue::Array(a)) if a.len() == rows => Self::of_array(a),
            Some(ColumnarValue::Array(a)) => {
                Sizes::Same(a.get_array_memory_size() as u128 / a.len().max(1) as u128)
            }
        }
    }

    fn of_array(a: &ArrayRef) -> Self {
        let lens =
            |f: &dyn Fn(usize) -> usize| Sizes::Each((0..a.len()).map(|i| f(i) as u128).collect());
        match a.data_type() {
            DataType::Utf8 => lens(&|i| a.as_string::<i32>().value_length(i) as usize),
            DataType::LargeUtf8 => lens(&|i| a.as_string::<i64>().value_length(i) as usize),
            DataType::Binary => lens(&|i| a.as_binary::<i32>().value_length(i) as usize),
            DataType::LargeBinary => lens(&|i| a.as_binary::<i64>().value_length(i) as usize),
            DataType::Utf8View => lens(&|i| a.as_string_view().views()[i] as u32 as usize),
            DataType::BinaryView => lens(&|i| a.as_binary_view().views()[i] as u32 as usize),
            _ => {
                // Lists and others: the widest a row can be is the whole array (slices of one
                // buffer may share it); spread evenly when that cannot be told.
                let total = a.get_array_memory_size() as u128;
                let per = total / a.len().max(1) as u128;
                match a.data_type() {
                    DataType::List(_) | DataType::LargeList(_) => {
                        let counts =
                            Ints::elements(Some(&ColumnarValue::Array(a.clone())), a.len());
                        let values = total.max(1);
                        let all: u128 = (0..a.len()).map(|r| counts.get(r)).sum::<u128>().max(1);
                        Sizes::Each(
                            (0..a.len())
                                .map(|r| per.max(counts.get(r) * values / all) + 16)
                                .collect(),
                        )
                    }
                    _ => Sizes::Same(per),
                }
            }
        }
    }

    fn get(&self, row: usize) -> u128 {
        match self {
            Sizes::Same(v) => *v,
            Sizes::Each(v) => v.get(row).copied().unwrap_or(0),
        }
    }

    fn max(&self) -> u128 {
        match self {
            Sizes::Same(v) => *v,
            Sizes::Each(v) => v.iter().copied().max().unwrap_or(0),
        }
    }
}

/// Per-row non-negative counts (negative and NULL count as none): the same per-row shape.
type Ints = Sizes;

impl Ints {
    fn counts(v: Option<&ColumnarValue>, rows: usize) -> Self {
        let clamp = |v: i64| v.max(0) as u128;
        match v {
            None => Ints::Same(0),
            Some(ColumnarValue::Scalar(s)) => Ints::Same(
                s.cast_to(&DataType::Int64)
                    .ok()
                    .and_then(|v| match v {
                        ScalarValue::Int64(v) => v,
                        _ => None,
                    })
                    // A count that cannot be read as an integer: the most it could be.
                    .map_or(u64::MAX as u128, clamp),
            ),
            Some(ColumnarValue::Array(a)) => match cast(a, &DataType::Int64) {
                Ok(ints) => {
                    let ints = ints.as_primitive::<Int64Type>();
                    Ints::Each(
                        (0..rows)
                            .map(|i| {
                                if ints.is_valid(i) {
                                    clamp(ints.value(i))
                                } else {
                                    0
                                }
                            })
                            .collect(),
                    )
                }
                Err(_) => Ints::Same(u64::MAX as u128),
            },
        }
    }

    /// Elements of each row of a list argument.
    fn elements(v: Option<&ColumnarValue>, rows: usize) -> Self {
        let array = match v {
            Some(ColumnarValue::Array(a)) => a.clone(),
            Some(ColumnarValue::Scalar(s)) => match s.to_array_of_size(1) {
                Ok(a) => return Self::elements(Some(&ColumnarValue::Array(a)), 1).first(),
                Err(_) => return Ints::Same(0),
            },
            None => return Ints::Same(0),
        };
        match array.data_type() {
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                Ints::Each(
                    (0..rows.min(l.len()))
                        .map(|i| l.value_length(i) as u128)
                        .collect(),
                )
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                Ints::Each(
                    (0..rows.min(l.len()))
                        .map(|i| l.value_length(i) as u128)
                        .collect(),
                )
            }
            DataType::FixedSizeList(_, n) => Ints::Same(*n as u128),
            _ => Ints::Same(0),
        }
    }

    fn first(self) -> Self {
        Ints::Same(self.get(0))
    }
}

/// Elements of `range`/`generate_series` for each row: (stop - start) / step, on integers,
/// dates and timestamps (a month counted as its shortest, 28 days).
pub(super) fn series_lengths(args: &[ColumnarValue], rows: usize) -> Ints {
    let value = |i: usize, r: usize| -> Option<ScalarValue> {
        match args.get(i)? {
            ColumnarValue::Scalar(s) => Some(s.clone()),
            ColumnarValue::Array(a) => ScalarValue::try_from_array(a, r).ok(),
        }
    };
    let per_row = rows.min(
        if args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) {
            rows
        } else {
            1
        },
    );
    let count = |r: usize| -> u128 {
        let (start, stop) = match args.len() {
            1 => (Some(0), value(0, r).and_then(|v| point(&v))),
            _ => (
                value(0, r).and_then(|v| point(&v)),
                value(1, r).and_then(|v| point(&v)),
            ),
        };
        let step = if args.len() > 2 {
            value(2, r).and_then(|v| step(&v))
        } else {
            Some(1)
        };
        match (start, stop, step) {
            (Some(a), Some(b), Some(s)) if s != 0 => (a - b).unsigned_abs() / s.unsigned_abs() + 1,
            (Some(_), Some(_), Some(_)) => 0,
            // NULL arguments give NULL; anything else unreadable may be as long as can be.
            _ if (0..args.len()).any(|i| value(i, r).is_some_and(|v| v.is_null())) => 0,
            _ => u64::MAX as u128,
        }
    };
    if per_row == 1 && rows > 1 {
        return Ints::Same(count(0));
    }
    Ints::Each((0..rows).map(count).collect())
}

/// A series bound in its smallest unit (integers; dates and timestamps in nanoseconds).
pub(super) fn point(v: &ScalarValue) -> Option<i128> {
    const DAY: i128 = 86_400_000_000_000;
    Some(match v {
        ScalarValue::Date32(Some(d)) => *d as i128 * DAY,
        ScalarValue::Date64(Some(ms)) => *ms as i128 * 1_000_000,
        ScalarValue::TimestampSecond(Some(t), _) => *t as i128 * 1_000_000_000,
        ScalarValue::TimestampMillisecond(Some(t), _) => *t as i128 * 1_000_000,
        ScalarValue::TimestampMicrosecond(Some(t), _) => *t as i128 * 1_000,
        ScalarValue::TimestampNanosecond(Some(t), _) => *t as i128,
        other => match other.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(i)) => i as i128,
            _ => return None,
        },
    })
}

/// A series step in the unit of [`point`]: intervals at their shortest.
pub(super) fn step(v: &ScalarValue) -> Option<i128> {
    const DAY: i128 = 86_400_000_000_000;
    Some(match v {
        ScalarValue::IntervalYearMonth(Some(m)) => *m as i128 * 28 * DAY,
        ScalarValue::IntervalDayTime(Some(d)) => {
            d.days as i128 * DAY + d.milliseconds as i128 * 1_000_000
        }
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            i.months as i128 * 28 * DAY + i.days as i128 * DAY + i.nanoseconds as i128
        }
        other => point(other)?,
    })
}

/// The bytes a scalar's value takes (strings and binaries by their length).
pub(crate) fn scalar_bytes(s: &ScalarValue) -> u128 {
    match s {
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => v.len() as u128,
        ScalarValue::Binary(Some(v))
        | ScalarValue::LargeBinary(Some(v))
        | ScalarValue::BinaryView(Some(v)) => v.len() as u128,
        // What the value's rows take, not the capacity its builder left behind (`array_agg` of
        // 100 integers: 800 bytes in a 64 KB buffer).
        ScalarValue::List(a) => slice_bytes(a.as_ref()),
        ScalarValue::LargeList(a) => slice_bytes(a.as_ref()),
        ScalarValue::FixedSizeList(a) => slice_bytes(a.as_ref()),
        ScalarValue::Struct(a) => slice_bytes(a.as_ref()),
        ScalarValue::Map(a) => slice_bytes(a.as_ref()),
        other => other.size() as u128,
    }
}

pub(super) fn slice_bytes(a: &dyn Array) -> u128 {
    // The slice size leaves out the data buffers of view types: count them whole there.
    if has_views(a.data_type()) {
        return a.get_array_memory_size() as u128;
    }
    a.to_data()
        .get_slice_memory_size()
        .unwrap_or_else(|_| a.get_array_memory_size()) as u128
}

pub(super) fn has_views(t: &DataType) -> bool {
    match t {
        DataType::Utf8View | DataType::BinaryView | DataType::ListView(_) => true,
        DataType::LargeListView(_) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_views(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_views(f.data_type())),
        DataType::Dictionary(_, v) => has_views(v),
        _ => false,
    }
}
