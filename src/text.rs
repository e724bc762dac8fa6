//! Text from the data made safe to show on a terminal: control and bidirectional-formatting
//! characters escaped (no escape sequence from a feed ever reaches a terminal), and lengths cut
//! by characters, never by bytes (a cut never splits a character).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that would act on a terminal, break a line or reorder what it shows instead of
/// being shown.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// `s` with every control or formatting character escaped (`\n`, `\t`, `\u{1b}`, ...).
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escaped`], then cut to at most `max` characters, the last one an ellipsis when cut.
pub(crate) fn printable(s: &str, max: usize) -> Cow<'_, str> {
    let e = escaped(s);
    match e.char_indices().nth(max) {
        None => e,
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = e.char_indices().nth(keep).map_or(e.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", &e[..end]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_and_cuts_by_characters() {
        assert_eq!(escaped("KEY-1"), "KEY-1");
        assert_eq!(escaped("a\u{1b}[31mred\n"), "a\\u{1b}[31mred\\n");
        assert_eq!(escaped("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{9b}");
        assert_eq!(
            escaped("a\u{2028}b"),
            "a\\u{2028}b",
            "a line separator breaks a table row"
        );
        let s = format!("a{}", "Ä".repeat(18));
        assert_eq!(printable(&s, 20), s, "19 characters fit");
        let long = format!("a{}", "Ä".repeat(30));
        let cut = printable(&long, 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…'));
        assert_eq!(printable("", 5), "");
        assert_eq!(printable("abc", 0), "…");
    }
}
