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

/// What [`hidden_character`] refuses, as a problem's message says it.
pub const VISIBLE_TEXT: &str = "must not contain control, bidirectional or zero-width characters";

/// Whether `c` hides or reorders text rather than showing in it.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
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
}
