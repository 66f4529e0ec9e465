//! Big statements in linear time: the long literal lists applications send
//! (`INSERT ... VALUES (...), (...), ...` of bulk inserts, `IN (1, 2, ...)`
//! lists) are shortened to their first row or item before parsing.
//!
//! Invariant: only rows and items made of literals alone are removed
//! (numbers, strings, NULL/TRUE/FALSE/DEFAULT, parameters, with signs and
//! casts to plain type names). Such an item names no relation and calls no
//! function, and the classifier never reads values, so the shortened text
//! classifies exactly as the whole (a property test compares them). Any
//! other construct in a list (a function call, a subquery, a comment, a
//! type with a modifier) ends the shortening there, and the rest is kept
//! and judged in full. Finding the lists uses the exact lexer of `reading`,
//! so nothing inside a string, quoted name or comment is mistaken for one.

use super::reading;

/// Statements longer than this are shortened before parsing (shorter ones
/// are cheap to parse, and cached).
pub const THRESHOLD: usize = 4096;

/// The text with every literal-only list after the first row (VALUES) or
/// item (IN) removed; None if nothing was removed or the text does not lex.
pub fn shorten(sql: &str) -> Option<String> {
    let s = sql.as_bytes();
    let mut anchors: Vec<(usize, bool)> = Vec::new();
    let lexed = reading::lex(s, &mut |a, b| {
        let w = &s[a..b];
        if w.eq_ignore_ascii_case(b"values") {
            anchors.push((b, true));
        } else if w.eq_ignore_ascii_case(b"in") {
            anchors.push((b, false));
        }
    });
    if !matches!(lexed, reading::Lexed::Complete { .. }) {
        return None;
    }
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut done = 0;
    for (after, values) in anchors {
        if after < done {
            continue;
        }
        let open = ws(s, after);
        if s.get(open) != Some(&b'(') {
            continue;
        }
        if values {
            // (row), (row), ...: keep the first, cut the literal ones after.
            let Some(first) = row(s, open) else { continue };
            let mut end = first;
            loop {
                let comma = ws(s, end);
                if s.get(comma) != Some(&b',') {
                    break;
                }
                match row(s, ws(s, comma + 1)) {
                    Some(e) => end = e,
                    None => break,
                }
            }
            if end > first {
                cuts.push((first, end));
                done = end;
            }
        } else {
            // IN (item, item, ...): keep the first item.
            let Some(first) = item(s, open + 1) else {
                continue;
            };
            let mut end = first;
            while s.get(end) == Some(&b',') {
                match item(s, end + 1) {
                    Some(e) => end = e,
                    None => break,
                }
            }
            if end > first && s.get(end) == Some(&b')') {
                cuts.push((first, end));
                done = end;
            }
        }
    }
    if cuts.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len() - cuts.iter().map(|(a, b)| b - a).sum::<usize>());
    let mut at = 0;
    for (a, b) in cuts {
        out.push_str(&sql[at..a]);
        at = b;
    }
    out.push_str(&sql[at..]);
    Some(out)
}

/// Skips spaces, tabs and newlines (not comments: a comment ends a list's
/// shortening).
fn ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0c)) {
        i += 1;
    }
    i
}

/// `( item, item, ... )` starting at `i` (which holds the `(`); the index
/// after the `)`.
fn row(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'(') {
        return None;
    }
    let mut j = item(s, i + 1)?;
    loop {
        match s.get(j)? {
            b',' => j = item(s, j + 1)?,
            b')' => return Some(j + 1),
            _ => return None,
        }
    }
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// One literal item starting at `i` (leading whitespace allowed); the index
/// of the `,` or `)` that follows it.
fn item(s: &[u8], i: usize) -> Option<usize> {
    let mut j = ws(s, i);
    if matches!(s.get(j), Some(b'+' | b'-')) && !matches!(s.get(j + 1), Some(b'-')) {
        j = ws(s, j + 1);
    }
    let c = *s.get(j)?;
    let mut dummy = false;
    j = match c {
        b'0'..=b'9' | b'.' => {
            let mut k = j;
            while k < s.len()
                && (ident_char(s[k])
                    || s[k] == b'.'
                    || (matches!(s[k], b'+' | b'-') && matches!(s[k - 1], b'e' | b'E')))
            {
                k += 1;
            }
            k
        }
        b'\'' => reading::quoted(s, j + 1, false, &mut dummy)?,
        b'e' | b'E' if s.get(j + 1) == Some(&b'\'') => reading::quoted(s, j + 2, true, &mut dummy)?,
        b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if s.get(j + 1) == Some(&b'\'') => {
            reading::quoted(s, j + 2, false, &mut dummy)?
        }
        b'$' => {
            let mut k = j + 1;
            while s.get(k).is_some_and(u8::is_ascii_digit) {
                k += 1;
            }
            if k == j + 1 {
                return None;
            }
            k
        }
        _ => {
            let mut k = j;
            while s.get(k).is_some_and(|b| ident_char(*b)) {
                k += 1;
            }
            let w = &s[j..k];
            let known = [&b"null"[..], b"true", b"false", b"default"]
                .iter()
                .any(|kw| w.eq_ignore_ascii_case(kw));
            if !known {
                return None;
            }
            k
        }
    };
    // Casts to plain type names: `::int`, `::timestamp with time zone`,
    // `::text[]`, `::pg_catalog.int8` (no modifiers, no quoted names).
    loop {
        j = ws(s, j);
        if !(s.get(j) == Some(&b':') && s.get(j + 1) == Some(&b':')) {
            break;
        }
        j = ws(s, j + 2);
        let start = j;
        loop {
            while s.get(j).is_some_and(|b| ident_char(*b) || *b == b'.') {
                j += 1;
            }
            let k = ws(s, j);
            if k > j && s.get(k).is_some_and(|b| b.is_ascii_alphabetic()) {
                j = k;
                continue;
            }
            break;
        }
        if j == start {
            return None;
        }
        while s.get(j) == Some(&b'[') && s.get(j + 1) == Some(&b']') {
            j += 2;
        }
    }
    let j = ws(s, j);
    matches!(s.get(j), Some(b',' | b')')).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_literal_lists_only() {
        let s = |t: &str| shorten(t);
        assert_eq!(
            s("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y''s'), (-3, E'\\\\'), (NULL, $1::text)").as_deref(),
            Some("INSERT INTO t (a, b) VALUES (1, 'x')")
        );
        assert_eq!(
            s("SELECT * FROM t WHERE id IN (1, 2, 3) AND x NOT IN ('a','b')").as_deref(),
            Some("SELECT * FROM t WHERE id IN (1) AND x NOT IN ('a')")
        );
        // A non-literal row ends the shortening; the rest is kept.
        assert_eq!(
            s("INSERT INTO t VALUES (1), (2), ((SELECT 1 FROM users)), (3), (4)").as_deref(),
            Some("INSERT INTO t VALUES (1), ((SELECT 1 FROM users)), (3), (4)")
        );
        assert_eq!(s("SELECT 1 WHERE a IN (SELECT id FROM users)"), None);
        assert_eq!(s("INSERT INTO t VALUES (f(1)), (2)"), None);
        assert_eq!(s("INSERT INTO t VALUES (1 /* c */), (2)"), None);
        assert_eq!(s("INSERT INTO t VALUES (1::numeric(5,2)), (2)"), None);
        // Inside strings and comments nothing is a list.
        assert_eq!(s("SELECT 'VALUES (1), (2)' -- IN (1, 2)\n"), None);
        assert_eq!(
            s("INSERT INTO t VALUES ('2024-01-01'::timestamp with time zone), ('2025-01-01'::timestamp with time zone)").as_deref(),
            Some("INSERT INTO t VALUES ('2024-01-01'::timestamp with time zone)")
        );
    }
}
