//! The bytes each row of a batch takes: what an operator that repeats rows (a join matching
//! one row many times, unnest, a window's value for every row) multiplies.

use datafusion::arrow::array::{Array, AsArray, OffsetSizeTrait};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;

/// The widest row of `batch`, in bytes of values.
pub(crate) fn widest_row(batch: &RecordBatch) -> u64 {
    let mut rows = vec![0u64; batch.num_rows()];
    for column in batch.columns() {
        for (row, size) in rows.iter_mut().zip(row_sizes(column.as_ref())) {
            *row = row.saturating_add(size);
        }
    }
    rows.into_iter().max().unwrap_or(0)
}

/// Each row's bytes of `a` (nested values included; fixed-width values their width).
fn row_sizes(a: &dyn Array) -> Vec<u64> {
    match a.data_type() {
        DataType::Utf8 => spans(a.as_string::<i32>().offsets()),
        DataType::LargeUtf8 => spans(a.as_string::<i64>().offsets()),
        DataType::Binary => spans(a.as_binary::<i32>().offsets()),
        DataType::LargeBinary => spans(a.as_binary::<i64>().offsets()),
        // A view's length is its low 32 bits; the view itself is 16 bytes.
        DataType::Utf8View => views(a.as_string_view().views()),
        DataType::BinaryView => views(a.as_binary_view().views()),
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            nested(l.offsets(), &row_sizes(l.values().as_ref()))
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            nested(l.offsets(), &row_sizes(l.values().as_ref()))
        }
        DataType::Map(_, _) => {
            let m = a.as_map();
            let entries: &dyn Array = m.entries();
            nested(m.offsets(), &row_sizes(entries))
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let child = row_sizes(l.values().as_ref());
            let n = *n as usize;
            (0..l.len())
                .map(|i| {
                    let start = l.value_offset(i) as usize;
                    child.get(start..start + n).map_or(0, |s| s.iter().sum())
                })
                .collect()
        }
        DataType::Struct(_) => {
            let s = a.as_struct();
            let mut rows = vec![0u64; s.len()];
            for column in s.columns() {
                for (row, size) in rows.iter_mut().zip(row_sizes(column.as_ref())) {
                    *row = row.saturating_add(size);
                }
            }
            rows
        }
        // Anything else (dictionaries, unions, ...): the array's whole size is every row's
        // bound, which refuses rather than misses a wide one.
        t => match t.primitive_width() {
            Some(w) => vec![w as u64; a.len()],
            None => vec![a.get_array_memory_size() as u64; a.len()],
        },
    }
}

fn spans<O: OffsetSizeTrait>(offsets: &OffsetBuffer<O>) -> Vec<u64> {
    offsets
        .windows(2)
        .map(|w| (w[1] - w[0]).as_usize() as u64)
        .collect()
}

fn views(views: &[u128]) -> Vec<u64> {
    views.iter().map(|v| (*v as u32) as u64 + 16).collect()
}

fn nested<O: OffsetSizeTrait>(offsets: &OffsetBuffer<O>, child: &[u64]) -> Vec<u64> {
    offsets
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0].as_usize(), w[1].as_usize());
            child.get(start..end).map_or(0, |s| s.iter().sum())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, ListArray, StringArray};
    use datafusion::arrow::datatypes::Int64Type;

    use super::*;

    #[test]
    fn the_widest_row_counts_every_column_and_nested_values() {
        let text: ArrayRef = Arc::new(StringArray::from(vec!["a", &"x".repeat(1000), "bc"]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1); 500]),
            Some(vec![]),
            None,
        ]));
        let batch = RecordBatch::try_from_iter([("t", text), ("i", ints), ("l", lists)]).unwrap();
        // Row 0: 1 + 8 + 500 x 8; row 1: 1000 + 8.
        assert_eq!(widest_row(&batch), 4009);
        // A slice sees only its own rows.
        assert_eq!(widest_row(&batch.slice(1, 2)), 1008);
    }
}
