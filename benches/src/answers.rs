//! Answers in a form every engine can be compared in: numbers as `f64`, dates and strings as
//! text, rows sorted. Two answers agree when they have the same rows and every number agrees to
//! a relative 1e-6 (engines differ in decimal scales and float summation order).

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

/// One cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// Any number.
    Num(f64),
    /// Strings, dates, booleans: as text.
    Text(String),
}

/// A whole answer: rows of cells.
pub type Answer = Vec<Vec<Cell>>;

/// The canonical answer of Arrow batches.
pub fn canonical(batches: &[RecordBatch]) -> anyhow::Result<Answer> {
    let mut rows: Answer = Vec::new();
    for batch in batches {
        let columns: Vec<(ArrayRef, bool)> = batch
            .columns()
            .iter()
            .map(|c| {
                if c.data_type().is_numeric() {
                    Ok((cast(c, &DataType::Float64)?, true))
                } else {
                    Ok((cast(c, &DataType::Utf8)?, false))
                }
            })
            .collect::<anyhow::Result<_>>()?;
        for i in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|(c, num)| {
                        if c.is_null(i) {
                            Cell::Null
                        } else if *num {
                            Cell::Num(
                                arrow::array::as_primitive_array::<arrow::datatypes::Float64Type>(
                                    c,
                                )
                                .value(i),
                            )
                        } else {
                            Cell::Text(arrow::array::as_string_array(c).value(i).to_string())
                        }
                    })
                    .collect(),
            );
        }
    }
    sort(&mut rows);
    Ok(rows)
}

/// Sorts rows by a key that float noise cannot reorder (numbers rounded to 2 decimals).
pub fn sort(rows: &mut Answer) {
    rows.sort_by_cached_key(|r| {
        r.iter()
            .map(|c| match c {
                Cell::Null => "\u{0}".to_string(),
                Cell::Num(n) => format!("{:+024.2}", n),
                Cell::Text(s) => s.clone(),
            })
            .collect::<Vec<_>>()
    });
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// `None` when `got` agrees with `want`, else what differs first.
pub fn difference(want: &Answer, got: &Answer) -> Option<String> {
    if want.len() != got.len() {
        return Some(format!("{} rows, expected {}", got.len(), want.len()));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w.len() != g.len() {
            return Some(format!(
                "row {i}: {} columns, expected {}",
                g.len(),
                w.len()
            ));
        }
        for (j, (a, b)) in w.iter().zip(g).enumerate() {
            let same = match (a, b) {
                (Cell::Num(x), Cell::Num(y)) => close(*x, *y),
                _ => a == b,
            };
            if !same {
                return Some(format!("row {i} column {j}: {b:?}, expected {a:?}"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn engines_that_differ_in_types_agree() {
        let a = RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec!["b", "a"])) as ArrayRef),
            (
                "v",
                Arc::new(
                    Decimal128Array::from(vec![1050, 2000])
                        .with_precision_and_scale(15, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
            ("d", Arc::new(Date32Array::from(vec![0, 1])) as ArrayRef),
        ])
        .unwrap();
        let b = RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            (
                "v",
                Arc::new(arrow::array::Float64Array::from(vec![20.0000000001, 10.5])) as ArrayRef,
            ),
            ("d", Arc::new(Date32Array::from(vec![1, 0])) as ArrayRef),
        ])
        .unwrap();
        let (a, b) = (canonical(&[a]).unwrap(), canonical(&[b]).unwrap());
        assert_eq!(difference(&a, &b), None);
        assert_eq!(a[0][2], Cell::Text("1970-01-02".into()));
    }

    #[test]
    fn a_wrong_number_a_missing_row_or_a_null_is_a_difference() {
        let batch = |v: Vec<Option<i64>>| {
            canonical(&[RecordBatch::try_from_iter(vec![(
                "v",
                Arc::new(Int64Array::from(v)) as ArrayRef,
            )])
            .unwrap()])
            .unwrap()
        };
        let want = batch(vec![Some(1), Some(1_000_000)]);
        assert!(difference(&want, &batch(vec![Some(1), Some(1_000_002)])).is_some());
        assert!(difference(&want, &batch(vec![Some(1)])).is_some());
        assert!(difference(&want, &batch(vec![None, Some(1_000_000)])).is_some());
        assert_eq!(
            difference(&want, &batch(vec![Some(1_000_000), Some(1)])),
            None
        );
    }
}
