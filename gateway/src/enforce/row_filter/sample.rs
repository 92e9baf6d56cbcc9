//! `@sample` (`policy-model.md` §8): whether a row's subject is in the deployment's sample.
//!
//! A subject is in an N% sample when the first eight bytes of
//! HMAC-SHA256(secret, "lakegate.sample\0" ‖ subject key as text), read as a big-endian
//! number, are below N% modulo 10,000. The same subjects in every query and every table keyed
//! by the same values (so a sandbox's joins by person still meet), and no one without the
//! secret can tell which subjects a sample holds.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Separates the sample's hashes from the hash mask's: a subject's masked value says nothing
/// of its membership.
const DOMAIN: &[u8] = b"lakegate.sample\0";

/// `column IN SAMPLE (basis_points / 100 %)` keyed with `key`.
pub(crate) fn sample_expr(column: Expr, basis_points: u16, key: Arc<[u8]>) -> Expr {
    ScalarUDF::new_from_impl(Sample {
        key,
        basis_points,
        signature: Signature::any(1, Volatility::Immutable),
    })
    .call(vec![column])
}

/// Whether one subject key (as text) is in the sample.
fn in_sample(key: &[u8], subject: &[u8], basis_points: u16) -> Result<bool> {
    let mut mac = HmacSha256::new_from_slice(key)
        .map_err(|e| DataFusionError::Internal(format!("mask key: {e}")))?;
    mac.update(DOMAIN);
    mac.update(subject);
    let digest = mac.finalize().into_bytes();
    let head = u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"));
    Ok(head % 10_000 < u64::from(basis_points))
}

#[derive(PartialEq, Eq, Hash)]
struct Sample {
    key: Arc<[u8]>,
    basis_points: u16,
    signature: Signature,
}

/// Never the key.
impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sample({} basis points)", self.basis_points)
    }
}

impl ScalarUDFImpl for Sample {
    fn name(&self) -> &str {
        "__lakegate_sample"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let column = args.args[0].clone().into_array(rows)?;
        Ok(ColumnarValue::Array(Arc::new(self.keep(&column)?)))
    }
}

impl Sample {
    /// True for the rows whose subject is in the sample; a NULL subject is in no sample.
    fn keep(&self, subjects: &ArrayRef) -> Result<BooleanArray> {
        let text = cast(subjects, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        (0..text.len())
            .map(|i| {
                if text.is_null(i) {
                    return Ok(Some(false));
                }
                in_sample(&self.key, text.value(i).as_bytes(), self.basis_points).map(Some)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn sample(basis_points: u16, key: &[u8]) -> Sample {
        Sample {
            key: Arc::from(key),
            basis_points,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    #[test]
    fn samples_are_keyed_deterministic_about_their_share_and_alike_for_like_keys() {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..20_000));
        let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..20_000).map(|i| i.to_string()),
        ));
        let ten = sample(1_000, b"secret");
        let kept = ten.keep(&ids).unwrap();
        // The same subjects every time, and for the same key held as text.
        assert_eq!(kept, ten.keep(&ids).unwrap());
        assert_eq!(kept, ten.keep(&texts).unwrap());
        let n = kept.true_count();
        assert!(
            (1_800..=2_200).contains(&n),
            "{n} of 20,000 in a 10% sample"
        );
        // Another secret, other subjects.
        let other = sample(1_000, b"another secret").keep(&ids).unwrap();
        assert_ne!(kept, other);
        // A larger share holds the smaller one: sandboxes that widen a sample keep their rows.
        let twenty = sample(2_000, b"secret").keep(&ids).unwrap();
        assert!((0..kept.len()).all(|i| !kept.value(i) || twenty.value(i)));
        // 100% is everyone; NULL is no one.
        assert_eq!(
            sample(10_000, b"secret").keep(&ids).unwrap().true_count(),
            20_000
        );
        let nulls: ArrayRef = Arc::new(Int64Array::from(vec![None, None]));
        assert_eq!(sample(10_000, b"k").keep(&nulls).unwrap().true_count(), 0);
        // Debug output never holds the key.
        assert!(!format!("{:?}", sample(1, b"secret")).contains("secret"));
    }
}
