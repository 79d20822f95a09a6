//! The one rule for text that people read: names, addresses, emails.
//!
//! Such text must not hide anything from its reader. Refused, wherever they
//! are in the text:
//!
//! - control characters ([`char::is_control`]: C0, DEL, C1), which PostgreSQL
//!   refuses in part (NUL) and terminals interpret;
//! - bidirectional controls: U+061C, U+200E, U+200F, U+202A to U+202E and
//!   U+2066 to U+2069, which reorder what is displayed (a name that reads
//!   `Ada` and sorts or matches as something else);
//! - zero-width characters: U+200B to U+200D, U+2060 and U+FEFF, which make
//!   two names that look the same differ.
//!
//! The zero-width joiners (U+200C, U+200D) have legitimate uses in some
//! scripts and emoji sequences; the shop refuses them anyway, as the price
//! of names that look like what they are.

use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

/// What [`hidden_character`] refuses, as a problem's message says it.
pub const VISIBLE_TEXT: &str = "must not contain control, bidirectional or zero-width characters";

/// The characters that hide or reorder text, as inclusive ranges: the
/// controls ([`char::is_control`]: C0, DEL and C1), then the bidirectional
/// and zero-width characters of the module docs. [`is_hidden`] and the
/// schema's `pattern` ([`visible_pattern`]) are both read from it.
pub const HIDDEN: [(char, char); 8] = [
    ('\u{0000}', '\u{001F}'),
    ('\u{007F}', '\u{009F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2060}'),
    ('\u{2066}', '\u{2069}'),
    ('\u{FEFF}', '\u{FEFF}'),
];

/// Whether `c` hides or reorders text rather than showing in it.
pub fn is_hidden(c: char) -> bool {
    HIDDEN.iter().any(|&(first, last)| (first..=last).contains(&c))
}

/// The JSON Schema `pattern` (ECMA-262, and the `regex` crate's syntax
/// too) of a text people read once its surrounding whitespace is dropped:
/// at least one character that is not whitespace, and no [`HIDDEN`] one.
pub fn visible_pattern() -> String {
    let hidden: String = HIDDEN
        .iter()
        .map(|&(first, last)| {
            if first == last {
                format!("\\u{:04X}", u32::from(first))
            } else {
                format!("\\u{:04X}-\\u{:04X}", u32::from(first), u32::from(last))
            }
        })
        .collect();
    format!("^[^{hidden}]*[^\\s{hidden}][^{hidden}]*$")
}

/// The schema of a text people read of at most `max_chars` characters: the
/// rule every service checks such text with (surrounding whitespace
/// dropped, then 1 to `max_chars` characters, none [`HIDDEN`]). The
/// schema's bounds count the text as sent, so it is a little stricter than
/// the services about surrounding whitespace, never looser.
pub fn schema(max_chars: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max_chars))
        .pattern(Some(visible_pattern()))
        .build()
}

/// The first hidden character of `text` (see the module docs), if any.
pub fn hidden_character(text: &str) -> Option<char> {
    text.chars().find(|c| is_hidden(*c))
}

/// The problem message for `text` if it holds a hidden character:
/// [`VISIBLE_TEXT`], naming the first one (`U+202E`).
pub fn check_visible(text: &str) -> Result<(), String> {
    match hidden_character(text) {
        Some(c) => Err(format!("{VISIBLE_TEXT} (found U+{:04X})", u32::from(c))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_passes_whatever_its_script() {
        for text in ["Ada Lovelace", "Zoë Ørsted", "東京都", "محمد", "12 St James's Square", "a\u{00A0}b", "👩💻"]
        {
            assert_eq!(check_visible(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn controls_bidi_and_zero_width_characters_are_named() {
        let hidden = [
            '\0', '\t', '\n', '\u{7F}', '\u{85}', '\u{9F}', '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}',
            '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{FEFF}',
        ];
        for c in hidden {
            let message = check_visible(&format!("Ada{c}Lovelace")).unwrap_err();
            assert!(message.starts_with(VISIBLE_TEXT), "{message}");
            assert!(message.ends_with(&format!("U+{:04X})", u32::from(c))), "{message}");
        }
        for neighbour in ['\u{061B}', '\u{2010}', '\u{202F}', '\u{FEFE}'] {
            assert!(!is_hidden(neighbour), "U+{:04X}", u32::from(neighbour));
        }
    }

    #[test]
    fn the_table_holds_every_control_character() {
        for c in (0..=0x3000).filter_map(char::from_u32) {
            if c.is_control() {
                assert!(is_hidden(c), "U+{:04X}", u32::from(c));
            }
        }
    }

    #[test]
    fn the_pattern_accepts_what_the_rule_accepts() {
        let pattern = regex::Regex::new(&visible_pattern()).unwrap();
        let candidates =
            ["Ada Lovelace", "Zoë Ørsted", "東京都", " a ", "a\u{00A0}b", "", " ", "\t", "a\u{202E}b", "a\nb"];
        let hidden = HIDDEN.iter().flat_map(|&(first, last)| [first, last]).map(|c| format!("x{c}y"));
        for text in candidates.iter().map(|s| s.to_string()).chain(hidden) {
            let rule = !text.trim().is_empty() && check_visible(&text).is_ok();
            assert_eq!(pattern.is_match(&text), rule, "{text:?}");
        }
    }
}
