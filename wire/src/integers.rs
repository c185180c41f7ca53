//! JSON numbers read as integers the way JSON Schema counts them: `4192346.0`
//! is an integer (the OpenAPI descriptions say `integer`, and tools that
//! follow them, such as schemathesis, send it), `4192346.5` is not, nor is a
//! number out of range. Used with `#[serde(deserialize_with = ...)]`;
//! serialization is unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A number that is an integer of type `T` (`i64` or `u64`).
struct Integer<T>(T);

trait FromNumber: Sized {
    const WHAT: &'static str;
    fn from_i64(v: i64) -> Option<Self>;
    fn from_u64(v: u64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
}

/// 2^53: beyond it a float no longer holds every integer, so `1e19` or
/// `-9223372036854775809` (parsed as a float, rounded to -2^63) could be an
/// out-of-range integer in disguise. Integral floats are accepted up to it;
/// larger integers must be written without a fraction or exponent.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

impl FromNumber for i64 {
    const WHAT: &'static str = "an integer from -2^63 to 2^63-1";
    fn from_i64(v: i64) -> Option<Self> {
        Some(v)
    }
    fn from_u64(v: u64) -> Option<Self> {
        i64::try_from(v).ok()
    }
    fn from_f64(v: f64) -> Option<Self> {
        (v.fract() == 0.0 && (-MAX_EXACT..=MAX_EXACT).contains(&v)).then_some(v as i64)
    }
}

/// Unsigned, but within `int64`, the format the descriptions give (task
/// ids never come near it).
impl FromNumber for u64 {
    const WHAT: &'static str = "an integer from 0 to 2^63-1";
    fn from_i64(v: i64) -> Option<Self> {
        u64::try_from(v).ok()
    }
    fn from_u64(v: u64) -> Option<Self> {
        (v <= i64::MAX as u64).then_some(v)
    }
    fn from_f64(v: f64) -> Option<Self> {
        (v.fract() == 0.0 && (0.0..=MAX_EXACT).contains(&v)).then_some(v as u64)
    }
}

struct IntegerVisitor<T>(PhantomData<T>);

impl<T: FromNumber> Visitor<'_> for IntegerVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::WHAT)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_i64(v).ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::from_u64(v).ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::from_f64(v).ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &self))
    }
}

impl<'de, T: FromNumber> Deserialize<'de> for Integer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(IntegerVisitor(PhantomData))
            .map(Integer)
    }
}

pub fn i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    Integer::<i64>::deserialize(deserializer).map(|n| n.0)
}

pub fn u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Integer::<u64>::deserialize(deserializer).map(|n| n.0)
}

pub fn i64s<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    Vec::<Integer<i64>>::deserialize(deserializer).map(|v| v.into_iter().map(|n| n.0).collect())
}

pub fn u64s_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u64>>, D::Error> {
    Option::<Vec<Integer<u64>>>::deserialize(deserializer)
        .map(|v| v.map(|v| v.into_iter().map(|n| n.0).collect()))
}

pub fn u64_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Option::<Integer<u64>>::deserialize(deserializer).map(|v| v.map(|n| n.0))
}

pub fn i64_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Option::<Integer<i64>>::deserialize(deserializer).map(|v| v.map(|n| n.0))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Sample {
        #[serde(deserialize_with = "super::i64s")]
        args: Vec<i64>,
        #[serde(deserialize_with = "super::u64")]
        id: u64,
    }

    fn parse(json: &str) -> Result<Sample, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_integers_and_fractions_are_refused() {
        assert_eq!(
            parse(r#"{"args": [4192346.0, -3, 9223372036854775807], "id": 7.0}"#),
            Ok(Sample {
                args: vec![4_192_346, -3, i64::MAX],
                id: 7
            })
        );
        for bad in [
            r#"{"args": [1.5], "id": 1}"#,
            r#"{"args": [1e19], "id": 1}"#,
            r#"{"args": [-9223372036854775809], "id": 1}"#,
            r#"{"args": [1e16], "id": 1}"#,
            r#"{"args": [9223372036854775808], "id": 1}"#,
            r#"{"args": ["1"], "id": 1}"#,
            r#"{"args": [1], "id": -1}"#,
            r#"{"args": [1], "id": 0.5}"#,
            r#"{"args": [1], "id": 9223372036854775808}"#,
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(
                err.contains("integer") || err.contains("invalid type"),
                "{bad}: {err}"
            );
        }
    }
}
