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

/// The bytes of values all rows of `batch` stand for (what copying them would build), where
/// that is less than the buffers it holds: a slice or a view array shares the buffers of the
/// batch it came from. Per column the smaller of the two: never more than the buffers held
/// (types without a per-row measure count as their whole array).
pub(crate) fn stands_for(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            let rows: u64 = row_sizes(c.as_ref())
                .into_iter()
                .fold(0u64, u64::saturating_add);
            rows.min(c.get_array_memory_size() as u64)
        })
        .fold(0u64, u64::saturating_add)
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
        // Views may overlap: each row is what its view stands for, summed in one pass.
        DataType::ListView(_) => {
            let l = a.as_list_view::<i32>();
            let child = prefix(&row_sizes(l.values().as_ref()));
            (0..l.len())
                .map(|i| window(&child, l.value_offset(i) as usize, l.value_size(i) as usize))
                .collect()
        }
        DataType::LargeListView(_) => {
            let l = a.as_list_view::<i64>();
            let child = prefix(&row_sizes(l.values().as_ref()));
            (0..l.len())
                .map(|i| window(&child, l.value_offset(i) as usize, l.value_size(i) as usize))
                .collect()
        }
        // Each key is the value it stands for (a dictionary repeats values without copying).
        DataType::Dictionary(_, _) => {
            let d = a.as_any_dictionary();
            let values = row_sizes(d.values().as_ref());
            d.normalized_keys()
                .into_iter()
                .map(|k| values.get(k).copied().unwrap_or(0))
                .collect()
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

/// Running sums: `out[i]` is the sum of `sizes[..i]`.
fn prefix(sizes: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(sizes.len() + 1);
    let mut sum = 0u64;
    out.push(0);
    for s in sizes {
        sum = sum.saturating_add(*s);
        out.push(sum);
    }
    out
}

/// The sum of `size` sizes from `start`, from running sums (0 when out of range).
fn window(prefix: &[u64], start: usize, size: usize) -> u64 {
    match (
        prefix.get(start),
        start.checked_add(size).and_then(|e| prefix.get(e)),
    ) {
        (Some(a), Some(b)) => b.saturating_sub(*a),
        _ => 0,
    }
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

    #[test]
    fn encodings_count_what_they_stand_for_not_what_they_send() {
        use datafusion::arrow::array::{DictionaryArray, ListViewArray};
        use datafusion::arrow::buffer::ScalarBuffer;
        use datafusion::arrow::datatypes::{Field, Int32Type};
        // 1,000 keys of one 1,000-byte value: a million bytes, in a few kilobytes.
        let value = "x".repeat(1000);
        let dict: DictionaryArray<Int32Type> = std::iter::repeat_n(value.as_str(), 1000).collect();
        let list = ListArray::new(
            Arc::new(Field::new_list_field(dict.data_type().clone(), true)),
            OffsetBuffer::from_lengths([1000]),
            Arc::new(dict),
            None,
        );
        let batch = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
        assert_eq!(widest_row(&batch), 1_000_000);
        // 1,000 list views over the same 1,000 ints, in one row.
        let views = ListViewArray::new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            ScalarBuffer::from(vec![0i32; 1000]),
            ScalarBuffer::from(vec![1000i32; 1000]),
            Arc::new(Int64Array::from(vec![1; 1000])),
            None,
        );
        let outer = ListArray::new(
            Arc::new(Field::new_list_field(views.data_type().clone(), true)),
            OffsetBuffer::from_lengths([1000]),
            Arc::new(views),
            None,
        );
        let batch = RecordBatch::try_from_iter([("l", Arc::new(outer) as ArrayRef)]).unwrap();
        assert_eq!(widest_row(&batch), 8_000_000);
    }
}
