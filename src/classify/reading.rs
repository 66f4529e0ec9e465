//! How PostgreSQL will read a text: the session settings its reading depends
//! on, which texts depend on them at all, and a scanner that follows
//! PostgreSQL's lexer (`scan.l`) for the boundaries of strings, quoted
//! identifiers, dollar quotes and comments.
//!
//! The server converts each message from `client_encoding` to the server
//! encoding, then lexes it; `standard_conforming_strings` decides whether `\`
//! escapes in `'...'`. (`backslash_quote` only decides whether `\'` in an
//! escape string is an error; it never moves where a string ends, so the guard
//! does not track it.) The invariants the session builds on:
//!
//! * **R1, texts that cannot be misread.** A text of ASCII bytes with no
//!   backslash is lexed identically under every client encoding PostgreSQL
//!   accepts (in all of them an ASCII byte that is not a multibyte
//!   character's second byte is that ASCII character, and without a
//!   non-ASCII byte there is no multibyte character) and under either
//!   setting of `standard_conforming_strings` (the two readings differ only
//!   at a backslash inside a `'...'` string). Such a text is judged at once,
//!   whatever the server is doing.
//! * **R2, texts that could be.** Any other text is judged only under a state
//!   the server has confirmed (`ParameterStatus` reports both settings, and
//!   every change is reported before the ReadyForQuery that follows it):
//!   `client_encoding` UTF8 or SQL_ASCII ([`encoding_readable`]: the guard
//!   reads UTF-8, and SQL_ASCII means the bytes reach the lexer unconverted)
//!   and `standard_conforming_strings` on. The session waits until the server
//!   owes no reply before judging it; inside an extended batch after an
//!   Execute, where waiting is impossible, it is judged only if both readings
//!   of `standard_conforming_strings` agree and it is ASCII
//!   ([`ambiguous_mid_batch`]), and rejected otherwise.
//! * **R3, states the guard cannot read.** A server report of any other
//!   state ends the session ([`refused_parameter`]); a statement that sets one
//!   with a literal value is rejected before it runs (`classify`).

/// Whether the guard reads texts in this client encoding as the server does.
/// Names are matched as PostgreSQL matches them (case and punctuation
/// ignored: `utf-8`, `Unicode`, `SQL_ASCII`).
pub fn encoding_readable(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(n.as_str(), "utf8" | "unicode" | "sqlascii")
}

/// Encodings in which a character's second byte can be an ASCII byte such
/// as a backslash (PostgreSQL refuses them as server encodings for that).
fn ascii_unsafe(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(
        n.as_str(),
        "sjis"
            | "shiftjis"
            | "shiftjis2004"
            | "mskanji"
            | "windows932"
            | "big5"
            | "windows950"
            | "gbk"
            | "windows936"
            | "cp936"
            | "uhc"
            | "windows949"
            | "johab"
            | "gb18030"
    )
}

/// Why the guard refuses `client_encoding = name`, with a hint.
pub fn encoding_refusal(name: &str) -> (String, String) {
    let why = if ascii_unsafe(name) {
        format!("in {name} the second byte of a character can be an ASCII byte such as a backslash, so the guard could not tell where a string ends as the server does")
    } else {
        format!("zoneguard reads statements as UTF-8 and does not decode {name}")
    };
    (
        format!("client_encoding {name} is not supported by zoneguard: {why}"),
        "Use client_encoding UTF8 (PostgreSQL converts to and from the server encoding), e.g. PGCLIENTENCODING=UTF8 or client_encoding=UTF8 in the connection string.".to_owned(),
    )
}

/// Whether a `standard_conforming_strings` value means on.
pub fn is_on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// If a ParameterStatus (`name`, `value`) puts the session in a state the
/// guard cannot read (R3), the FATAL message and hint that end it.
pub fn refused_parameter(name: &[u8], value: &[u8]) -> Option<(String, String)> {
    let value = String::from_utf8_lossy(value);
    match name {
        b"client_encoding" if !encoding_readable(&value) => Some(encoding_refusal(&value)),
        b"standard_conforming_strings" if !is_on(&value) => Some((
            "zoneguard requires standard_conforming_strings = on".to_owned(),
            "With it off, backslashes in strings change where a string ends, and the guard could misread a statement. Set it back to on for this role and database.".to_owned(),
        )),
        _ => None,
    }
}

/// R1: whether the reading of `text` can depend on the session's settings.
#[inline]
pub fn depends_on_settings(text: &[u8]) -> bool {
    text.iter().any(|&b| b >= 0x80 || b == b'\\')
}

/// Inside an extended batch after an Execute (the server may have changed a
/// setting and will not say so before the batch's Sync): why `text` could be
/// read differently under another state, if it could.
///
/// Another client encoding can only fold an ASCII byte
/// that follows a non-ASCII one into a non-ASCII character: no quote, comment
/// or statement boundary moves (none of `'` `"` `$` `-` `/` `*` `(` `,` is
/// ever a second byte) unless that byte is a backslash, and every name the
/// server then sees with a non-ASCII character is one the guard also sees
/// with one. That matters only if the policy names tables with non-ASCII
/// characters (`ascii_names` false). With standard_conforming_strings off a
/// `'...'` string ends elsewhere only at an odd run of backslashes before a
/// quote.
pub fn ambiguous_mid_batch(text: &[u8], ascii_names: bool) -> Option<&'static str> {
    if !text.is_ascii() && !ascii_names {
        return Some("it has non-ASCII characters");
    }
    // A backslash can be a character's second byte only right after a lead
    // byte (always >= 0x81); in UTF-8 text such a byte ends a non-ASCII
    // character. Folded away, it changes the parity of the backslash run it
    // starts, and that moves where a string ends only if the run is
    // followed by a quote (`E'é\\'`); before anything else (`E'é\\x'`) it
    // changes the string's content, never its end.
    for (i, w) in text.windows(2).enumerate() {
        if w[0] >= 0x80 && w[1] == b'\\' {
            let run = text[i + 1..].iter().take_while(|&&b| b == b'\\').count();
            if text.get(i + 1 + run) == Some(&b'\'') {
                return Some(
                    "it has a backslash right after a non-ASCII character, before a quote",
                );
            }
        }
    }
    if !text.contains(&b'\\') {
        return None;
    }
    match scan(text) {
        Lexed::Complete {
            off_reading_differs: false,
        } => None,
        _ => Some("it has a backslash before a quote inside a '...' string"),
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lexed {
    /// Every string, quoted identifier, dollar quote and block comment ends.
    /// `off_reading_differs`: read with standard_conforming_strings off, a
    /// `'...'` string would end elsewhere (an odd run of backslashes before
    /// a quote in it).
    Complete { off_reading_differs: bool },
    /// The text ends inside one: PostgreSQL's lexer raises a syntax error
    /// (42601) and nothing of the message runs.
    Unterminated,
    /// A construct whose reading differs between PostgreSQL versions.
    Unsure,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

pub(crate) fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Scans `s` as PostgreSQL's lexer does with `standard_conforming_strings`
/// on, following only what decides where literals and comments end.
pub fn scan(s: &[u8]) -> Lexed {
    lex(s, &mut |_, _| {})
}

/// [`scan`], calling `on_word(start, end)` for every unquoted word
/// (identifier or keyword) outside strings, quoted identifiers and
/// comments.
pub(crate) fn lex(s: &[u8], on_word: &mut dyn FnMut(usize, usize)) -> Lexed {
    let mut backslash = false;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        match c {
            b'-' if next == Some(b'-') => i = line_comment(s, i),
            b'/' if next == Some(b'*') => match block_comment(s, i) {
                Some(end) => i = end,
                None => return Lexed::Unterminated,
            },
            b'\'' => match quoted(s, i + 1, false, &mut backslash) {
                Some(end) => i = end,
                None => return Lexed::Unterminated,
            },
            b'"' => match quoted_name(s, i) {
                Some(end) => i = end,
                None => return Lexed::Unterminated,
            },
            b'$' => match dollar_tag(s, i) {
                Some(tag_end) => match dollar_quoted(s, i, tag_end) {
                    Some(end) => i = end,
                    None => return Lexed::Unterminated,
                },
                // A parameter ($1) or a stray dollar.
                None => {
                    i += 1;
                    while i < s.len() && s[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            },
            b'0'..=b'9' | b'.' if c != b'.' || next.is_some_and(|n| n.is_ascii_digit()) => {
                // A number (with its junk suffix, an error since PostgreSQL 15).
                let start = i;
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_' || s[i] == b'.')
                {
                    i += 1;
                }
                // `1e'...'`: before PostgreSQL 15 an escape string follows.
                if s.get(i) == Some(&b'\'') && matches!(s[i - 1], b'e' | b'E') && i > start {
                    return Lexed::Unsure;
                }
            }
            _ if ident_start(c) => {
                let start = i;
                while i < s.len() && ident_cont(s[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                on_word(start, i);
                match (word, s.get(i), s.get(i + 1)) {
                    ([b'e' | b'E'], Some(b'\''), _) => match quoted(s, i + 1, true, &mut backslash)
                    {
                        Some(end) => i = end,
                        None => return Lexed::Unterminated,
                    },
                    // U&'...' and U&"..." end like '...' and "...".
                    ([b'u' | b'U'], Some(b'&'), Some(b'\'' | b'"')) => i += 1,
                    _ => {}
                }
            }
            b'\\' => {
                i += 1;
            }
            _ => i += 1,
        }
    }
    Lexed::Complete {
        off_reading_differs: backslash,
    }
}

/// The end of a `--` comment starting at `i`: the line break (or the
/// text's end).
pub(crate) fn line_comment(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i] != b'\n' && s[i] != b'\r' {
        i += 1;
    }
    i
}

/// The end (after its `*/`) of a `/* ... */` comment starting at `i`,
/// nested comments included; None if the text ends inside it.
pub(crate) fn block_comment(s: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 1;
    i += 2;
    while depth > 0 {
        match (s.get(i)?, s.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
            }
            _ => i += 1,
        }
    }
    Some(i)
}

/// The end (after the closing quote) of a quoted name whose opening `"`
/// is at `i` (`""` stands for a quote); None if the text ends inside it.
pub(crate) fn quoted_name(s: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match s.get(i)? {
            b'"' if s.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The end (after the closing tag) of a dollar-quoted string whose opening
/// tag runs from `i` to `tag_end` ([`dollar_tag`]); None if never closed.
pub(crate) fn dollar_quoted(s: &[u8], i: usize, tag_end: usize) -> Option<usize> {
    let tag = &s[i..tag_end];
    let p = s[tag_end..].windows(tag.len()).position(|w| w == tag)?;
    Some(tag_end + p + tag.len())
}

/// The end (index after the closing quote) of a quoted string whose body
/// starts at `i`, following quote continuation across a newline; `None` if
/// the text ends inside it. `escape`: an E'...' string, where a backslash
/// escapes the next byte.
pub(crate) fn quoted(s: &[u8], mut i: usize, escape: bool, backslash: &mut bool) -> Option<usize> {
    loop {
        match *s.get(i)? {
            b'\\' if escape => i += 2,
            b'\\' => {
                // Read with standard_conforming_strings off, a run of
                // backslashes escapes pairwise; only an odd run before a
                // quote moves where the string ends.
                let run = s[i..].iter().take_while(|&&b| b == b'\\').count();
                if run % 2 == 1 && s.get(i + run) == Some(&b'\'') {
                    *backslash = true;
                }
                i += run;
            }
            b'\'' if s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => match continuation(s, i + 1) {
                Some(j) => i = j + 1,
                None => return Some(i + 1),
            },
            _ => i += 1,
        }
    }
}

/// PostgreSQL's `quotecontinue`: whitespace holding a newline, then a quote,
/// continues the string. Returns the index of that quote.
fn continuation(s: &[u8], mut i: usize) -> Option<usize> {
    while matches!(s.get(i), Some(b' ' | b'\t' | 0x0c)) {
        i += 1;
    }
    if !matches!(s.get(i), Some(b'\n' | b'\r')) {
        return None;
    }
    loop {
        match s.get(i) {
            Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0c) => i += 1,
            Some(b'-') if s.get(i + 1) == Some(&b'-') => {
                while i < s.len() && s[i] != b'\n' && s[i] != b'\r' {
                    i += 1;
                }
                if i >= s.len() {
                    return None;
                }
            }
            Some(b'\'') => return Some(i),
            _ => return None,
        }
    }
}

/// The end of a dollar-quote delimiter (`$$`, `$tag$`) starting at `i`.
pub(crate) fn dollar_tag(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if s.get(j) != Some(&b'$') {
        if !s.get(j).is_some_and(|&b| ident_start(b)) {
            return None;
        }
        while s
            .get(j)
            .is_some_and(|&b| ident_start(b) || b.is_ascii_digit())
        {
            j += 1;
        }
        if s.get(j) != Some(&b'$') {
            return None;
        }
    }
    Some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bs: bool) -> Lexed {
        Lexed::Complete {
            off_reading_differs: bs,
        }
    }

    #[test]
    fn scans_literal_boundaries_as_postgres_does() {
        for (sql, want) in [
            (
                "SELECT 'a''b', \"x\"\"y\", $$ ' $$, $q$ $$ $q$ -- '",
                complete(false),
            ),
            ("SELECT E'\\'', 'x'", complete(false)),
            ("SELECT 'a\\'", complete(true)),
            ("SELECT E'a' \n 'b\\'c'", complete(false)),
            ("SELECT 'a' \n 'b\\'", complete(true)),
            ("SELECT 'abc", Lexed::Unterminated),
            ("SELECT E'abc\\'", Lexed::Unterminated),
            ("SELECT \"abc", Lexed::Unterminated),
            ("SELECT /* /* */ 1", Lexed::Unterminated),
            ("SELECT /* /* */ */ 1", complete(false)),
            ("SELECT $a$ x", Lexed::Unterminated),
            ("SELECT a$b$c, $1, 1", complete(false)),
            ("SELECT 1e'x'", Lexed::Unsure),
            ("SELECT U&'\\0041' UESCAPE '!'", complete(false)),
            ("SELECT '\\x8e12'::bytea, 'a\\\\'", complete(false)),
            ("SELECT abce'\\'", complete(true)),
            ("SELECT 1 -- 'never closed", complete(false)),
        ] {
            assert_eq!(scan(sql.as_bytes()), want, "{sql}");
        }
    }

    #[test]
    fn which_texts_depend_on_settings() {
        assert!(!depends_on_settings(b"SELECT 'a' FROM users"));
        assert!(depends_on_settings(b"SELECT E'\\n'"));
        assert!(depends_on_settings("SELECT 'é'".as_bytes()));
        assert_eq!(ambiguous_mid_batch(b"SELECT E'\\n', $$\\$$", true), None);
        assert!(ambiguous_mid_batch(b"SELECT 'a\\'", true).is_some());
        assert_eq!(ambiguous_mid_batch("SELECT 'é'".as_bytes(), true), None);
        assert!(ambiguous_mid_batch("SELECT 'é'".as_bytes(), false).is_some());
        assert_eq!(
            ambiguous_mid_batch("SELECT 'é', E'\\n'".as_bytes(), true),
            None
        );
        assert!(ambiguous_mid_batch("SELECT 'é\\'".as_bytes(), true).is_some());
        assert!(ambiguous_mid_batch("SELECT E'é\\\\'".as_bytes(), true).is_some());
        // Regression (psycopg's executemany): a backslash after a non-ASCII
        // character, not before a quote, changes no string's end.
        assert_eq!(
            ambiguous_mid_batch("INSERT INTO t VALUES (E'é\\\\x', E'ü\\n')".as_bytes(), true),
            None
        );
        assert_eq!(ambiguous_mid_batch(b"SELECT '\\x8e12'::bytea", true), None);
    }

    #[test]
    fn encodings_and_settings() {
        for ok in ["UTF8", "utf-8", "Unicode", "SQL_ASCII"] {
            assert!(encoding_readable(ok), "{ok}");
        }
        for bad in ["SJIS", "BIG5", "GBK", "LATIN1", "EUC_JP", "WIN1252"] {
            assert!(!encoding_readable(bad), "{bad}");
        }
        assert!(encoding_refusal("SJIS").0.contains("backslash"));
        assert!(refused_parameter(b"client_encoding", b"BIG5").is_some());
        assert!(refused_parameter(b"standard_conforming_strings", b"off").is_some());
        assert!(refused_parameter(b"standard_conforming_strings", b"on").is_none());
        assert!(refused_parameter(b"TimeZone", b"UTC").is_none());
    }
}
