//! JSON helpers shared by the market decoders: splitting a value into rows or events without
//! copying, and reading numbers that may come as JSON numbers or as strings.

use serde_json::value::RawValue;

/// Splits one JSON text into its elements: an array gives its elements, an object gives itself.
/// Anything else (or invalid JSON) is an error message.
pub(crate) fn elements(text: &str) -> Result<Vec<&RawValue>, String> {
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            serde_json::from_str::<Vec<&RawValue>>(text).map_err(|e| format!("invalid JSON: {e}"))
        }
        Some(b'{') => serde_json::from_str::<&RawValue>(text)
            .map(|v| vec![v])
            .map_err(|e| format!("invalid JSON: {e}")),
        Some(_) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => Err(format!("expected a JSON object or array, got {}", kind(&v))),
            Err(e) => Err(format!("invalid JSON: {e}")),
        },
        None => Err("empty message".to_string()),
    }
}

/// When a typed parse of `raw` failed with `err` because a field name repeats
/// (`{"symbol":"A","symbol":"B"}`), the object rewritten with the last value of each field, as
/// most JSON readers take it; `None` for any other failure. Only called once the typed parse
/// failed, so the common path pays nothing.
pub(crate) fn without_duplicate_fields(raw: &str, err: &serde_json::Error) -> Option<String> {
    if !err.to_string().starts_with("duplicate field") {
        return None;
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v @ serde_json::Value::Object(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// The JSON type name of a value, for messages.
pub fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A number written either as a JSON number or as a string (`"0.48"`, `".48"`); `null` is
/// `None`. Non-finite values and other types are errors.
pub(crate) fn lenient_f64(raw: Option<&RawValue>) -> Result<Option<f64>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get().trim();
    let parsed = if text == "null" {
        return Ok(None);
    } else if let Some(s) = text.strip_prefix('"') {
        let s = s.strip_suffix('"').unwrap_or(s).trim();
        s.parse::<f64>()
            .map_err(|_| format!("not a number: \"{s}\""))?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        text.parse::<f64>()
            .map_err(|_| format!("not a number: {text}"))?
    } else {
        return Err(format!("expected a number or numeric string, got {text}"));
    };
    if parsed.is_finite() {
        Ok(Some(parsed))
    } else {
        Err(format!("not a finite number: {text}"))
    }
}

/// Epoch milliseconds written as a JSON integer or a string of digits, parsed exactly
/// (never through f64).
pub(crate) fn lenient_ms(raw: &RawValue) -> Result<u64, String> {
    let text = raw.get().trim();
    let digits = text
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(text)
        .trim();
    digits
        .parse::<u64>()
        .map_err(|_| format!("not an integer millisecond time: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn numbers_as_strings_or_numbers() {
        assert_eq!(lenient_f64(Some(&raw("\".48\""))).unwrap(), Some(0.48));
        assert_eq!(lenient_f64(Some(&raw("\"0.48\""))).unwrap(), Some(0.48));
        assert_eq!(
            lenient_f64(Some(&raw("1.2009874512E7"))).unwrap(),
            Some(12_009_874.512)
        );
        assert_eq!(lenient_f64(Some(&raw("5.0E-4"))).unwrap(), Some(0.0005));
        assert_eq!(lenient_f64(Some(&raw("null"))).unwrap(), None);
        assert_eq!(lenient_f64(None).unwrap(), None);
        assert!(lenient_f64(Some(&raw("\"abc\""))).is_err());
        assert!(lenient_f64(Some(&raw("\"inf\""))).is_err());
        assert!(lenient_f64(Some(&raw("true"))).is_err());
    }

    #[test]
    fn times_are_exact_integers() {
        assert_eq!(
            lenient_ms(&raw("\"1790267353913\"")).unwrap(),
            1_790_267_353_913
        );
        assert_eq!(
            lenient_ms(&raw("1790267353913")).unwrap(),
            1_790_267_353_913
        );
        assert!(lenient_ms(&raw("\"1.5\"")).is_err());
        assert!(lenient_ms(&raw("-5")).is_err());
    }

    #[test]
    fn repeated_fields_keep_the_last_value() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Ab {
            a: u32,
            b: u32,
        }
        let raw = r#"{"a": 1, "b": 2, "a": 3}"#;
        let err = serde_json::from_str::<Ab>(raw).unwrap_err();
        assert_eq!(
            without_duplicate_fields(raw, &err).as_deref(),
            Some(r#"{"a":3,"b":2}"#)
        );
        let err = serde_json::from_str::<Ab>(r#"{"a": "x", "b": 2}"#).unwrap_err();
        assert_eq!(
            without_duplicate_fields(r#"{"a": "x", "b": 2}"#, &err),
            None
        );
    }

    #[test]
    fn elements_of_objects_and_arrays() {
        assert_eq!(elements("{\"a\":1}").unwrap().len(), 1);
        assert_eq!(elements(" [{\"a\":1},{\"b\":2}]").unwrap().len(), 2);
        assert!(elements("42").unwrap_err().contains("got a number"));
        assert!(elements("{oops").unwrap_err().starts_with("invalid JSON"));
        assert_eq!(elements("").unwrap_err(), "empty message");
    }
}
