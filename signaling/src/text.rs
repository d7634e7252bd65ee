//! Cleaning peer text: display names (from tokens and guest requests) and chat text.
//!
//! Control characters (NUL included) and the bidirectional embedding, override and isolate
//! characters (U+202A–U+202E, U+2066–U+2069) are removed: the first can corrupt logs and
//! storage, the second make a name or message display as something else than it is (a
//! right-to-left override turns `gpj.exe` into `exe.jpg`). Chat text keeps its line breaks and
//! tabs.

/// Longest display name, characters (after cleaning).
pub const MAX_NAME_CHARS: usize = 64;

/// Whether `c` is a bidirectional embedding, override or isolate character.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A display name: without control and bidirectional control characters, trimmed, at most
/// [`MAX_NAME_CHARS`] characters. May be empty.
pub fn clean_name(name: &str) -> String {
    let kept: String = name
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c))
        .collect();
    kept.trim()
        .chars()
        .take(MAX_NAME_CHARS)
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// Chat text: without control characters other than line feed and tab, and without
/// bidirectional control characters; trimmed.
pub fn clean_chat_text(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|&c| (!c.is_control() || c == '\n' || c == '\t') && !is_bidi_control(c))
        .collect();
    kept.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_controls_and_bidi_overrides_and_are_capped() {
        assert_eq!(clean_name("  Al\u{0}ice\u{202E}gpj.exe "), "Alicegpj.exe");
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{2066}', '\u{2069}',
        ] {
            assert_eq!(clean_name(&format!("a{c}b")), "ab", "{:x}", c as u32);
        }
        assert_eq!(
            clean_name(&"é".repeat(10_000)).chars().count(),
            MAX_NAME_CHARS
        );
        assert_eq!(clean_name("\u{1b}[31m"), "[31m");
        assert_eq!(clean_name("\u{202E}\n"), "");
        assert_eq!(
            clean_name("שלום Bob"),
            "שלום Bob",
            "right-to-left text itself stays"
        );
    }

    #[test]
    fn chat_text_keeps_line_breaks_but_not_nul_or_overrides() {
        assert_eq!(clean_chat_text("a\0b\u{202E}c\r\nd\te"), "abc\nd\te");
        assert_eq!(clean_chat_text(" \u{0}\u{2067} "), "");
    }
}
