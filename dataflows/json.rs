//! JSON helpers shared by the market decoders: splitting a value into rows or events without
//! copying, reading numbers that may come as JSON numbers or as strings, and [`Scan`], the
//! validating single-pass scanner behind the decoders' fast paths.

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

/// A validating forward scanner over one JSON text, for decoders' fast paths: it reads the few
/// fields a decoder needs and skips the rest while checking them against the JSON grammar.
///
/// Every method answers `None` when the input is anything but plain, valid JSON of the
/// expected shape (an escape in a string, a nested value where a scalar is skipped, invalid
/// syntax, a number out of range). The caller then decodes the message again on its general
/// (`serde_json`) path, which gives the error or the unusual-but-valid reading. So the scanner
/// never accepts what the general path rejects, and it reads every value it accepts exactly
/// as `serde_json` does (numbers through the same correctly rounded conversion).
pub(crate) struct Scan<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scan<'a> {
    /// A scanner at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Scan { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips JSON whitespace and returns the next byte, if any.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    /// Consumes `c` (after whitespace).
    #[inline]
    pub fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// A string without escapes (its contents), or `None`.
    #[inline]
    pub fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let b = self.bytes();
        let start = self.pos;
        let mut i = start;
        loop {
            let c = *b.get(i)?;
            if c == b'"' {
                break;
            }
            // Control characters are invalid in JSON strings; escapes go the general way.
            if c == b'\\' || c < 0x20 {
                return None;
            }
            i += 1;
        }
        self.pos = i + 1;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        self.text.get(start..i)
    }

    /// The text of a number, checked against the JSON grammar
    /// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
    #[inline]
    pub fn number_text(&mut self) -> Option<&'a str> {
        self.peek()?;
        let b = self.bytes();
        let start = self.pos;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.pos = i;
        self.text.get(start..i)
    }

    /// Whether the next value is `null` (consumed if so).
    #[inline]
    pub fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes().get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A number as `f64`, or `null`; a number too large for `f64` is `None` (as `serde_json`
    /// rejects it).
    #[inline]
    pub fn opt_f64(&mut self) -> Option<Option<f64>> {
        if self.null()? {
            return Some(None);
        }
        let v: f64 = self.number_text()?.parse().ok()?;
        v.is_finite().then_some(Some(v))
    }

    /// A non-negative integer that fits `u64`, or `null`.
    #[inline]
    pub fn opt_u64(&mut self) -> Option<Option<u64>> {
        if self.null()? {
            return Some(None);
        }
        let t = self.number_text()?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok().map(Some)
    }

    /// A string without escapes, or `null`.
    #[inline]
    pub fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            return Some(None);
        }
        self.plain_str().map(Some)
    }

    /// Skips one scalar value (string, number, `true`, `false`, `null`).
    #[inline]
    pub fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_str().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number_text().map(drop),
        }
    }

    /// Reads the fields of an object: `field(self, name)` reads or skips each value.
    #[inline]
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let name = self.plain_str()?;
            self.eat(b':')?;
            field(self, name)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads a JSON array of elements with `element`, or a bare element (one object).
    #[inline]
    pub fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.eat(b'[').is_none() {
            element(self)?;
            return self.at_end().then_some(());
        }
        if self.eat(b']').is_none() {
            loop {
                element(self)?;
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.at_end().then_some(())
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
