//! Big statements in linear time: the long lists applications send
//! (`INSERT ... VALUES (...), (...), ...` of bulk inserts, `IN (1, 2, ...)`
//! lists, `ARRAY[...]` parameters rendered inline, the `CASE WHEN ... THEN
//! ...` arms of bulk updates) are shortened before parsing to one element
//! of each shape.
//!
//! Invariant: an element is removed only if it is made of literals alone
//! (numbers, strings, NULL/TRUE/FALSE/DEFAULT, parameters, with signs and
//! casts to plain type names), or if an element kept before it has the
//! same *shape*: the same text once every literal that is a value (not
//! under a call's or a subquery's parentheses; a `(` after a word other
//! than an expression keyword such as WHEN, AND or IN is a call's) is
//! replaced by a marker of its kind and whitespace runs are made one. The classifier reads
//! literals only as a function's arguments (`nextval('t')`,
//! `set_config(...)`, regclass arguments), and those are part of the shape
//! as written, as are every name, keyword, operator and cast; so a removed
//! element adds nothing to what the kept ones contribute, and the
//! shortened text classifies exactly as the whole (a property test
//! compares them on generated statements). What the shape reading does
//! not follow (a comment, a `U&` string, a number with junk after it)
//! ends the list's shortening there, and the rest is judged in full.
//! Finding the lists uses the exact lexer of `reading`, so nothing inside
//! a string, quoted name or comment is mistaken for one.

use std::collections::HashSet;

use super::reading;

/// Statements longer than this are shortened before parsing (shorter ones
/// are cheap to parse, and cached).
pub const THRESHOLD: usize = 4096;

/// The text with the removable elements of its long lists removed (see the
/// module's invariant); None if nothing was removed or the text does not lex.
pub fn shorten(sql: &str) -> Option<String> {
    let found = find(sql.as_bytes())?;
    (!found.cuts.is_empty()).then(|| cut(sql, &found.cuts))
}

/// `sql` without the byte ranges `cuts` (in order, not overlapping).
fn cut(sql: &str, cuts: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(sql.len() - cuts.iter().map(|(a, b)| b - a).sum::<usize>());
    let mut at = 0;
    for &(a, b) in cuts {
        out.push_str(&sql[at..a]);
        at = b;
    }
    out.push_str(&sql[at..]);
    out
}

/// Each literal (string, dollar-quoted string, quoted name) counts this
/// much in a text's [`weight`], whatever its length.
const LITERAL_WEIGHT: usize = 16;

/// What parsing a text costs in memory, in bytes of SQL: its length with
/// every literal counted as [`LITERAL_WEIGHT`] and comments as one. A
/// syntax tree takes about 150 times the SQL outside literals (tokens,
/// nodes), but a literal is one token however long: a 5 MB document in
/// one string weighs little. A text that does not lex weighs its length.
pub fn weight(s: &[u8]) -> usize {
    let mut w = 0;
    let mut i = 0;
    let mut backslash = false;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let end = match c {
            b'\'' => {
                // E'...': backslash escapes (the prefix is a lone e).
                let escape = i > 0
                    && matches!(s[i - 1], b'e' | b'E')
                    && (i < 2 || !reading::ident_cont(s[i - 2]));
                reading::quoted(s, i + 1, escape, &mut backslash)
            }
            b'"' => reading::quoted_name(s, i),
            b'$' => match reading::dollar_tag(s, i) {
                Some(tag_end) => reading::dollar_quoted(s, i, tag_end),
                None => {
                    w += 1;
                    i += 1;
                    continue;
                }
            },
            b'-' if next == Some(b'-') => {
                w += 1;
                i = reading::line_comment(s, i);
                continue;
            }
            b'/' if next == Some(b'*') => {
                let Some(end) = reading::block_comment(s, i) else {
                    return s.len();
                };
                w += 1;
                i = end;
                continue;
            }
            _ if reading::ident_cont(c) => {
                // A word or number: `$` continues a word (`a$1`), not a
                // literal.
                let mut k = i;
                while s.get(k).is_some_and(|b| reading::ident_cont(*b)) {
                    k += 1;
                }
                w += k - i;
                i = k;
                continue;
            }
            _ => {
                w += 1;
                i += 1;
                continue;
            }
        };
        match end {
            Some(e) => {
                w += LITERAL_WEIGHT;
                i = e;
            }
            None => return s.len(),
        }
    }
    w
}

/// `sql` as texts that each weigh at most `max` ([`weight`]), for a
/// statement too big to parse at once: each is the statement with its
/// longest list cut down to a run of the elements [`shorten`] keeps (and,
/// if still too big, the same again on its next list), in the text's
/// order. Invariant: every element of every list is in some piece, and a
/// list's elements contribute to a classification independently of one
/// another (rows of VALUES, items of IN and ARRAY[...]), so the union of
/// the pieces' classifications is the whole's. None if no such cutting
/// brings every piece under `max` (a statement with no list, a single
/// element too big) within four times the text's length in all.
pub fn pieces(sql: &str, max: usize) -> Option<Vec<String>> {
    let limit = sql
        .len()
        .saturating_mul(4)
        .saturating_add(max.saturating_mul(2));
    let mut made = 0usize;
    let mut out = Vec::new();
    let mut todo = vec![sql.to_owned()];
    while let Some(mut t) = todo.pop() {
        // Shortened first: what a piece keeps of each list is then one
        // element of each shape.
        let mut found = find(t.as_bytes());
        if let Some(f) = found.as_ref().filter(|f| !f.cuts.is_empty()) {
            t = cut(&t, &f.cuts);
            found = find(t.as_bytes());
        }
        let w = weight(t.as_bytes());
        if w <= max {
            out.push(t);
            continue;
        }
        let s = t.as_bytes();
        let found = found?;
        let (kind, list) = found
            .lists
            .iter()
            .filter(|(_, l)| l.len() >= 2)
            .max_by_key(|(_, l)| l[l.len() - 1].1 - l[0].0)?;
        let weights: Vec<usize> = list.iter().map(|&(a, b)| weight(&s[a..b]) + 1).collect();
        let list_weight: usize = weights.iter().sum();
        let base = w.saturating_sub(list_weight);
        // Each run as big as the rest of the text leaves room for; at
        // least two runs, so that every step makes the texts smaller.
        let room = if base < max / 2 { max - base } else { max / 2 };
        let budget = room.min(list_weight.div_ceil(2)).max(1);
        let (start, end) = (list[0].0, list[list.len() - 1].1);
        let mut runs = Vec::new();
        let mut k = 0;
        while k < list.len() {
            let mut j = k;
            let mut run = 0;
            while j < list.len() && (j == k || run + weights[j] <= budget) {
                run += weights[j];
                j += 1;
            }
            let mut piece =
                String::with_capacity(start + (t.len() - end) + (list[j - 1].1 - list[k].0));
            piece.push_str(&t[..start]);
            for (n, &(a, b)) in list[k..j].iter().enumerate() {
                if n > 0 {
                    piece.push_str(kind.separator());
                }
                piece.push_str(&t[a..b]);
            }
            piece.push_str(&t[end..]);
            made += piece.len();
            if made > limit {
                return None;
            }
            runs.push(piece);
            k = j;
        }
        // In the text's order: the first run is taken next.
        todo.extend(runs.into_iter().rev());
    }
    Some(out)
}

/// The lists of a text: what may be cut from them, and the spans of the
/// elements kept, list by list (a row's span is its parentheses; an item's
/// runs from after the `,` or opening bracket to the next `,` or closing
/// bracket).
struct Found {
    cuts: Vec<(usize, usize)>,
    lists: Vec<(List, Vec<(usize, usize)>)>,
}

fn find(s: &[u8]) -> Option<Found> {
    let mut anchors: Vec<(usize, Anchor)> = Vec::new();
    let lexed = reading::lex(s, &mut |a, b| {
        let w = &s[a..b];
        if w.eq_ignore_ascii_case(b"values") {
            anchors.push((b, Anchor::Values));
        } else if w.eq_ignore_ascii_case(b"in") {
            anchors.push((b, Anchor::In));
        } else if w.eq_ignore_ascii_case(b"array") {
            anchors.push((b, Anchor::Array));
        } else if w.eq_ignore_ascii_case(b"case") {
            anchors.push((b, Anchor::Case));
        }
    });
    if !matches!(lexed, reading::Lexed::Complete { .. }) {
        return None;
    }
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut lists = Vec::new();
    let mut done = 0;
    for (after, anchor) in anchors {
        if after < done {
            continue;
        }
        if let Anchor::Case = anchor {
            // CASE [operand] WHEN ... THEN ... [WHEN ...] [ELSE ...] END:
            // the arms are the list.
            let mut buf = Vec::new();
            let Some(first) = shape(s, after, List::Operand, &mut buf) else {
                continue;
            };
            let mut kept = Vec::new();
            if let Some(end) = shorten_list(s, first, List::Arms, &mut cuts, &mut kept) {
                done = end;
                lists.push((List::Arms, kept));
            }
            continue;
        }
        let open = ws(s, after);
        let (opener, list) = match anchor {
            Anchor::Values => (b'(', List::Rows),
            Anchor::In => (b'(', List::Items(b')')),
            _ => (b'[', List::Items(b']')),
        };
        if s.get(open) != Some(&opener) {
            continue;
        }
        if let List::Items(_) = list {
            // `IN (SELECT ...)`, `IN (VALUES ...)`: a query, not a list.
            if starts_query(s, open + 1) {
                continue;
            }
        }
        let first = match list {
            List::Rows => open,
            _ => open + 1,
        };
        let mut kept = Vec::new();
        if let Some(end) = shorten_list(s, first, list, &mut cuts, &mut kept) {
            done = end;
            lists.push((list, kept));
        }
    }
    Some(Found { cuts, lists })
}

/// Does a query start at `i` (after whitespace)? A parenthesized query
/// starts with one of these or with another parenthesis.
fn starts_query(s: &[u8], i: usize) -> bool {
    let first = ws(s, i);
    let mut k = first;
    while s.get(k).is_some_and(|b| ident_char(*b)) {
        k += 1;
    }
    let w = &s[first..k];
    [&b"select"[..], b"with", b"values", b"table"]
        .iter()
        .any(|q| w.eq_ignore_ascii_case(q))
}

/// Keywords after which a `(` opens an expression, not a call's
/// arguments: `WHEN (a = 1)`, `x IN (1, 2)`, `NOT (b)`. Every other word
/// before a `(` is taken for a function's name (or a type's, or ANY,
/// ROW, EXISTS, ARRAY: kept as written all the same).
fn grouping_word(w: &[u8]) -> bool {
    [
        &b"when"[..],
        b"then",
        b"else",
        b"case",
        b"and",
        b"or",
        b"not",
        b"in",
        b"is",
        b"like",
        b"ilike",
        b"between",
    ]
    .iter()
    .any(|k| w.eq_ignore_ascii_case(k))
}

#[derive(Clone, Copy)]
enum Anchor {
    Values,
    In,
    Array,
    Case,
}

/// A list's elements: `(row), (row), ...` after VALUES; `item, item, ...`
/// up to the closing byte (`)` of IN, `]` of ARRAY); a CASE's arms, `WHEN
/// ... THEN ...` up to its ELSE or END. `Operand` reads a simple CASE's
/// operand, to find the first arm.
#[derive(Clone, Copy, PartialEq)]
enum List {
    Rows,
    Items(u8),
    Arms,
    Operand,
}

impl List {
    /// What joins the elements of a run ([`pieces`]).
    fn separator(self) -> &'static str {
        match self {
            List::Arms | List::Operand => " ",
            _ => ",",
        }
    }
}

/// Is the word at `i` (case-insensitively) `w`, as a whole word?
fn word_at(s: &[u8], i: usize, w: &[u8]) -> bool {
    s.get(i..i + w.len())
        .is_some_and(|x| x.eq_ignore_ascii_case(w))
        && !s.get(i + w.len()).is_some_and(|b| reading::ident_cont(*b))
}

/// Walks the list whose first element starts at `first`, adding to `cuts`
/// every `, element` that is literal-only or has the shape of an element
/// kept before it; the first element is always kept, and the spans of the
/// kept ones go to `spans`. Returns where the walk ended (None if the
/// first element could not be read).
fn shorten_list(
    s: &[u8],
    first: usize,
    list: List,
    cuts: &mut Vec<(usize, usize)>,
    spans: &mut Vec<(usize, usize)>,
) -> Option<usize> {
    let mut kept: HashSet<Vec<u8>> = HashSet::new();
    let mut shape_buf = Vec::new();
    let (mut end, _) = element(s, first, list, &mut shape_buf, &mut kept)?;
    spans.push((first, end));
    loop {
        // Where the next element starts, and where its cut would.
        let (start, cut) = if list == List::Arms {
            if !word_at(s, end, b"when") {
                break;
            }
            (end, end)
        } else {
            let comma = ws(s, end);
            if s.get(comma) != Some(&b',') {
                break;
            }
            match list {
                List::Rows => (ws(s, comma + 1), comma),
                _ => (comma + 1, comma),
            }
        };
        let Some((e, removable)) = element(s, start, list, &mut shape_buf, &mut kept) else {
            break;
        };
        if removable {
            cuts.push((cut, e));
        } else {
            spans.push((start, e));
        }
        end = e;
    }
    Some(end)
}

/// One element starting at `i`: its end (after a row's `)`; at the `,` or
/// closing byte after an item) and whether it may be removed: it is
/// literal-only, or its shape is one kept before (else its shape is kept
/// now). None if the element cannot be read (a comment, say): the list's
/// shortening ends there.
fn element(
    s: &[u8],
    i: usize,
    list: List,
    buf: &mut Vec<u8>,
    kept: &mut HashSet<Vec<u8>>,
) -> Option<(usize, bool)> {
    let literal = match list {
        List::Rows => row(s, i),
        List::Items(close) => item(s, i).filter(|&e| s[e] == b',' || s[e] == close),
        _ => None,
    };
    if let Some(e) = literal {
        return Some((e, true));
    }
    buf.clear();
    let e = shape(s, i, list, buf)?;
    if kept.contains(buf.as_slice()) {
        return Some((e, true));
    }
    kept.insert(buf.clone());
    Some((e, false))
}

/// The shape of the element starting at `i`, into `out`: its text with
/// whitespace runs made one space and every literal that is a value
/// (outside any call's or subquery's parentheses) replaced by a marker of
/// its kind. Two elements of one shape differ only in such values, which
/// the classifier never reads: it reads literals only as a function's
/// arguments (`nextval('t')`, `set_config(...)`), and those are kept as
/// written. Returns the element's end, as [`element`]; None for anything
/// this reading does not follow (comments, `U&` strings, a `;`, control
/// bytes, unbalanced brackets).
fn shape(s: &[u8], mut i: usize, list: List, out: &mut Vec<u8>) -> Option<usize> {
    // One entry per open bracket: whether literals inside it are kept as
    // written (a call's arguments, a subquery, anything under them).
    let mut verbatim: Vec<bool> = Vec::new();
    let mut after_word = false;
    // CASEs opened inside the element (their WHEN, ELSE and END are not
    // the element's end).
    let mut cases = 0usize;
    i = ws(s, i);
    if list == List::Arms {
        if !word_at(s, i, b"when") {
            return None;
        }
        out.extend_from_slice(b"when");
        i += 4;
    }
    if list == List::Rows {
        if s.get(i) != Some(&b'(') {
            return None;
        }
        out.push(b'(');
        verbatim.push(false);
        i += 1;
    }
    loop {
        let c = *s.get(i)?;
        let inside = verbatim.last().copied().unwrap_or(false);
        let mut word = false;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                i = ws(s, i);
                out.push(b' ');
                continue;
            }
            b'-' if s.get(i + 1) == Some(&b'-') => return None,
            b'/' if s.get(i + 1) == Some(&b'*') => return None,
            b';' => return None,
            0..=0x1f | 0x7f => return None,
            b'(' | b'[' => {
                let query = c == b'(' && starts_query(s, i + 1);
                verbatim.push(inside || (c == b'(' && (after_word || query)));
                out.push(c);
                i += 1;
            }
            b')' | b']' => {
                if verbatim.is_empty() {
                    // An item's end: the list's closing byte.
                    trim(out);
                    return (list == List::Items(c) && cases == 0).then_some(i);
                }
                verbatim.pop();
                out.push(c);
                i += 1;
                if verbatim.is_empty() && list == List::Rows {
                    return (c == b')').then_some(i);
                }
            }
            b',' if verbatim.is_empty() => {
                trim(out);
                return matches!(list, List::Items(_) if cases == 0).then_some(i);
            }
            b'\'' => {
                let mut backslash = false;
                let e = reading::quoted(s, i + 1, false, &mut backslash)?;
                literal(out, &s[i..e], b'S', inside);
                i = e;
            }
            b'"' => {
                let e = reading::quoted_name(s, i)?;
                out.extend_from_slice(&s[i..e]);
                i = e;
                word = true;
            }
            b'$' => {
                if let Some(tag_end) = reading::dollar_tag(s, i) {
                    let e = reading::dollar_quoted(s, i, tag_end)?;
                    literal(out, &s[i..e], b'S', inside);
                    i = e;
                } else {
                    let mut k = i + 1;
                    while s.get(k).is_some_and(u8::is_ascii_digit) {
                        k += 1;
                    }
                    if k == i + 1 || s.get(k).is_some_and(|b| ident_char(*b) || *b >= 0x80) {
                        return None;
                    }
                    literal(out, &s[i..k], b'P', inside);
                    i = k;
                }
            }
            b'0'..=b'9' | b'.' if c != b'.' || s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let k = number(s, i)?;
                literal(out, &s[i..k], b'N', inside);
                i = k;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let mut k = i;
                while s.get(k).is_some_and(|b| reading::ident_cont(*b)) {
                    k += 1;
                }
                let w = &s[i..k];
                match (w, s.get(k)) {
                    // E'...', B'...', X'...', N'...': one literal.
                    ([b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'], Some(b'\'')) => {
                        let e = prefixed(s, i)?;
                        literal(out, &s[i..e], b'S', inside);
                        i = e;
                    }
                    ([b'u' | b'U'], Some(b'&')) => return None,
                    _ => {
                        let top = verbatim.is_empty();
                        if w.eq_ignore_ascii_case(b"case") {
                            cases += 1;
                        } else if w.eq_ignore_ascii_case(b"end") && cases > 0 {
                            cases -= 1;
                        } else if top && cases == 0 && matches!(list, List::Arms | List::Operand) {
                            let when = w.eq_ignore_ascii_case(b"when");
                            if when
                                || w.eq_ignore_ascii_case(b"else")
                                || w.eq_ignore_ascii_case(b"end")
                            {
                                // The arm's end (the operand's: the first WHEN).
                                trim(out);
                                return (list == List::Arms || when).then_some(i);
                            }
                        }
                        out.extend_from_slice(w);
                        i = k;
                        // A call's name, unless a keyword that opens an
                        // expression.
                        word = !grouping_word(w);
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
        after_word = word;
    }
}

/// The end of the literal whose prefix letter is at `i` (`E'...'`,
/// `B'...'`, `X'...'`, `N'...'`), if the lexer accepts it whatever it
/// holds; None for one whose value could make the whole statement fail to
/// lex (an escape that must be followed by digits, or names a code point
/// or byte, in `E'...'`; a digit out of range in a bit string), so that
/// such a literal never stands in a shape for one that lexes.
fn prefixed(s: &[u8], i: usize) -> Option<usize> {
    let escape = matches!(s[i], b'e' | b'E');
    let mut backslash = false;
    let e = reading::quoted(s, i + 2, escape, &mut backslash)?;
    let body = &s[i + 2..e - 1];
    let ok = match s[i] {
        b'e' | b'E' => {
            !body
                .windows(2)
                .any(|w| w[0] == b'\\' && matches!(w[1], b'0'..=b'7' | b'x' | b'u' | b'U'))
                || body.is_empty()
        }
        b'b' | b'B' => body.iter().all(|b| matches!(b, b'0' | b'1')),
        b'x' | b'X' => body.iter().all(u8::is_ascii_hexdigit),
        _ => true,
    };
    ok.then_some(e)
}

fn trim(out: &mut Vec<u8>) {
    if out.last() == Some(&b' ') {
        out.pop();
    }
}

/// The end of a numeric literal starting at `i`, read strictly (digits
/// with `_` separators, a fraction, an exponent; `0x`, `0o`, `0b`
/// integers); None if anything else touches it (`1abc` is an error since
/// PostgreSQL 15 and a number then a word before it: not followed here).
fn number(s: &[u8], i: usize) -> Option<usize> {
    let digits = |mut k: usize, ok: fn(&u8) -> bool| {
        while s.get(k).is_some_and(|b| ok(b) || *b == b'_') {
            k += 1;
        }
        k
    };
    let mut k;
    if s[i] == b'0' && matches!(s.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        k = digits(i + 2, u8::is_ascii_hexdigit);
        if k == i + 2 {
            return None;
        }
    } else {
        k = digits(i, u8::is_ascii_digit);
        if s.get(k) == Some(&b'.') && s.get(k + 1) != Some(&b'.') {
            k = digits(k + 1, u8::is_ascii_digit);
        }
        if matches!(s.get(k), Some(b'e' | b'E')) {
            let mut e = k + 1;
            if matches!(s.get(e), Some(b'+' | b'-')) {
                e += 1;
            }
            if s.get(e).is_some_and(u8::is_ascii_digit) {
                k = digits(e, u8::is_ascii_digit);
            }
        }
    }
    let touching = s
        .get(k)
        .is_some_and(|b| reading::ident_cont(*b) || matches!(b, b'.' | b'\''));
    (!touching).then_some(k)
}

/// A literal into a shape: as written under a call or subquery, else its
/// kind's marker (a control byte, which cannot stand in SQL text outside
/// a literal: [`shape`] refuses elements holding one).
fn literal(out: &mut Vec<u8>, text: &[u8], kind: u8, verbatim: bool) {
    if verbatim {
        out.extend_from_slice(text);
    } else {
        out.push(0x01);
        out.push(kind);
    }
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
        b'0'..=b'9' | b'.' => number(s, j)?,
        b'\'' => reading::quoted(s, j + 1, false, &mut dummy)?,
        b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if s.get(j + 1) == Some(&b'\'') => {
            prefixed(s, j)?
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
    // `::text[]`, `::pg_catalog.int8` (no modifiers, no quoted names; more
    // words only as the SQL standard's multi-word names have them, so that
    // no other word passes for part of a type).
    loop {
        j = ws(s, j);
        if !(s.get(j) == Some(&b':') && s.get(j + 1) == Some(&b':')) {
            break;
        }
        j = ws(s, j + 2);
        let start = j;
        // Each dotted part a name: it starts with a letter or `_`.
        loop {
            if !s
                .get(j)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
            {
                return None;
            }
            while s.get(j).is_some_and(|b| ident_char(*b)) {
                j += 1;
            }
            if s.get(j) != Some(&b'.') {
                break;
            }
            j += 1;
        }
        // The standard's multi-word names, each after its own first word.
        let first = s[start..j]
            .rsplit(|b| *b == b'.')
            .next()
            .unwrap_or_default();
        let is =
            |w: &[u8], names: &[&str]| names.iter().any(|n| w.eq_ignore_ascii_case(n.as_bytes()));
        let rest: &[&[&str]] = if is(first, &["timestamp", "time"]) {
            &[&["with", "without"], &["time"], &["zone"]]
        } else if is(first, &["character", "char", "bit"]) {
            &[&["varying"]]
        } else if is(first, &["double"]) {
            &[&["precision"]]
        } else {
            &[]
        };
        let mut at = j;
        let mut whole = true;
        for names in rest {
            let k = ws(s, at);
            let mut e = k;
            while s.get(e).is_some_and(|b| ident_char(*b)) {
                e += 1;
            }
            if k == at || !is(&s[k..e], names) {
                whole = false;
                break;
            }
            at = e;
        }
        if whole {
            j = at;
        }
        while s.get(j) == Some(&b'[') && s.get(j + 1) == Some(&b']') {
            j += 2;
        }
    }
    let j = ws(s, j);
    matches!(s.get(j), Some(b',' | b')' | b']')).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sql` shortens to (None: nothing cut).
    fn expect(sql: &str, want: Option<&str>) {
        assert_eq!(shorten(sql).as_deref(), want, "{sql}");
    }

    #[test]
    fn shortens_literal_lists_only() {
        expect(
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y''s'), (-3, E'\\\\'), (NULL, $1::text)",
            Some("INSERT INTO t (a, b) VALUES (1, 'x')"),
        );
        expect(
            "SELECT * FROM t WHERE id IN (1, 2, 3) AND x NOT IN ('a','b')",
            Some("SELECT * FROM t WHERE id IN (1) AND x NOT IN ('a')"),
        );
        // Rows of other shapes are kept, once per shape.
        expect(
            "INSERT INTO t VALUES (1), (2), ((SELECT 1 FROM users)), (3), ((SELECT 1 FROM users))",
            Some("INSERT INTO t VALUES (1), ((SELECT 1 FROM users))"),
        );
        expect("SELECT 1 WHERE a IN (SELECT id FROM users)", None);
        expect("SELECT 1 WHERE a IN (select 1, 2, 2)", None);
        expect(
            "INSERT INTO t VALUES (f(1)), (2)",
            Some("INSERT INTO t VALUES (f(1))"),
        );
        expect("INSERT INTO t VALUES (1 /* c */), (2)", None);
        expect(
            "INSERT INTO t VALUES (1::numeric(5,2)), (2::numeric(5,2))",
            Some("INSERT INTO t VALUES (1::numeric(5,2))"),
        );
        // Inside strings and comments nothing is a list.
        expect("SELECT 'VALUES (1), (2)' -- IN (1, 2)\n", None);
        expect("INSERT INTO t VALUES ('2024-01-01'::timestamp with time zone), ('2025-01-01'::timestamp with time zone)", Some("INSERT INTO t VALUES ('2024-01-01'::timestamp with time zone)"));
    }

    #[test]
    fn shapes_abstract_values_only() {
        // Values differ, calls and names do not: one row of each shape.
        expect("INSERT INTO t VALUES (1, 'a' || 'b', now()), (2, 'c' ||  'd', now()), (3, 'e' || 'f', clock_timestamp()), (4, E'g' || 'h', now())", Some("INSERT INTO t VALUES (1, 'a' || 'b', now()), (3, 'e' || 'f', clock_timestamp())"));
        // A call's arguments are kept as written: nextval('a') and
        // nextval('b') write different sequences.
        expect("INSERT INTO t VALUES (nextval('a')), (nextval('b'))", None);
        expect(
            "INSERT INTO t VALUES (nextval('a')), (nextval('a'))",
            Some("INSERT INTO t VALUES (nextval('a'))"),
        );
        // So are a subquery's, and anything under a call.
        expect("INSERT INTO t VALUES ((SELECT 'a')), ((SELECT 'b'))", None);
        expect("INSERT INTO t VALUES (f((1))), (f((2)))", None);
        expect("INSERT INTO t VALUES (f ('x')), (f\n('y'))", None);
        // Tuples in IN lists and ARRAY[...] elements.
        expect(
            "SELECT 1 FROM t WHERE (a, b) IN ((1, 'x'), (2, 'y'), (3, lower('z')))",
            Some("SELECT 1 FROM t WHERE (a, b) IN ((1, 'x'), (3, lower('z')))"),
        );
        expect("SELECT 1 FROM t WHERE a = ANY(ARRAY[1, 2, 3]) AND b = ANY (ARRAY['x'::text, 'y'::text])", Some("SELECT 1 FROM t WHERE a = ANY(ARRAY[1]) AND b = ANY (ARRAY['x'::text])"));
        // What the shape reading does not follow ends the shortening.
        expect("INSERT INTO t VALUES (1abc + 1), (2abc + 1)", None);
        expect("INSERT INTO t VALUES (U&'a' || 'b'), (U&'c' || 'd')", None);
        expect("INSERT INTO t VALUES ($1x + 1), ($2x + 1)", None);
        expect("INSERT INTO t VALUES (1 + 1 -- c\n), (2 + 2)", None);
    }

    #[test]
    fn case_arms_are_a_list() {
        // Django's bulk_update: one arm per row, one shape.
        expect(
            r#"UPDATE "t" SET "f" = CASE WHEN ("t"."id" = 1) THEN 'a' WHEN ("t"."id" = 2) THEN 'b' WHEN ("t"."id" = 3) THEN nextval('s') ELSE NULL END WHERE "t"."id" IN (1, 2, 3)"#,
            Some(
                r#"UPDATE "t" SET "f" = CASE WHEN ("t"."id" = 1) THEN 'a' WHEN ("t"."id" = 3) THEN nextval('s') ELSE NULL END WHERE "t"."id" IN (1)"#,
            ),
        );
        // A simple CASE's operand; nested CASEs inside an arm.
        expect("SELECT CASE x WHEN 1 THEN 'a' WHEN 2 THEN CASE WHEN y THEN 1 END WHEN 3 THEN CASE WHEN y THEN 2 END END FROM t", Some("SELECT CASE x WHEN 1 THEN 'a' WHEN 2 THEN CASE WHEN y THEN 1 END END FROM t"));
        // Arms whose calls differ are kept.
        expect(
            "SELECT CASE WHEN a THEN nextval('a') WHEN b THEN nextval('b') END",
            None,
        );
        // `WHEN (x)`: an expression in parentheses, not a call: its values
        // are values. `f (x)`: a call.
        expect(
            "SELECT CASE WHEN (x = 1) THEN f (1) WHEN (x = 2) THEN f (2) END",
            None,
        );
        expect(
            "SELECT CASE WHEN (x = 1) THEN 1 WHEN (x = 2) THEN 2 END",
            Some("SELECT CASE WHEN (x = 1) THEN 1 END"),
        );
        // A comment ends the arms' shortening where it stands.
        expect(
            "SELECT CASE WHEN a = 1 THEN 1 WHEN a = 2 THEN 2 /* c */ WHEN a = 3 THEN 3 END",
            None,
        );
    }

    #[test]
    fn weight_counts_sql_outside_literals() {
        let w = |t: &str| weight(t.as_bytes());
        assert_eq!(w("SELECT 1"), 8);
        assert_eq!(w("SELECT 'abc'"), 7 + LITERAL_WEIGHT);
        let doc = format!("INSERT INTO t VALUES ('{}')", "x".repeat(5_000_000));
        assert_eq!(w(&doc), 22 + LITERAL_WEIGHT + 1);
        let dollar = format!("SELECT $f${}$f$", "'".repeat(1000));
        assert_eq!(w(&dollar), 7 + LITERAL_WEIGHT);
        // An escape string's \' does not end it; a standard one's does.
        assert_eq!(w("SELECT E'a\\'b', 1"), 7 + 1 + LITERAL_WEIGHT + 3);
        assert_eq!(
            w("SELECT \"a b\" -- c\n, /* d */ 1"),
            7 + LITERAL_WEIGHT + 8
        );
        // What does not lex weighs its length.
        assert_eq!(w("SELECT 'abc"), 11);
        assert_eq!(w("SELECT /* abc"), 13);
    }

    #[test]
    fn pieces_cut_the_longest_list_in_runs() {
        let rows: Vec<String> = (0..100).map(|i| format!("(f({i}))")).collect();
        let sql = format!("INSERT INTO t VALUES {} RETURNING id", rows.join(", "));
        let p = pieces(&sql, 200).unwrap();
        assert!(p.len() > 4, "{p:?}");
        assert!(p.iter().all(|t| weight(t.as_bytes()) <= 200), "{p:?}");
        assert!(p
            .iter()
            .all(|t| t.starts_with("INSERT INTO t VALUES (f(") && t.ends_with(") RETURNING id")));
        // Every row in exactly one piece, in order.
        let joined: Vec<String> = p
            .iter()
            .flat_map(|t| {
                t["INSERT INTO t VALUES ".len()..t.len() - " RETURNING id".len()]
                    .split(',')
                    .map(str::trim)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(joined, rows);
        // Nothing to cut: None.
        let chain = (0..100)
            .map(|i| format!("a = {i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        assert_eq!(pieces(&format!("SELECT 1 WHERE {chain}"), 200), None);
        // A head too big alone: None.
        assert_eq!(
            pieces(
                &format!("SELECT 1 WHERE {chain} AND b IN (f(1), f(2), f(3))"),
                200
            ),
            None
        );
    }

    #[test]
    fn only_standard_words_continue_a_type_name() {
        expect(
            "INSERT INTO t VALUES (1::double precision), (2::character varying), ('x'::time without time zone)",
            Some("INSERT INTO t VALUES (1::double precision)"),
        );
        // Any other word after a type name is not part of it: the row is
        // no literal (here a syntax error; `OR col` would be a column).
        expect(
            "INSERT INTO t VALUES (1::int), (2::timestamp with ELSE time zone), (3::bool OR x), (4::timestamp0x with time zone), (5::int varying), (6::1eint), (7::pg_catalog.), (8::a..b)",
            None,
        );
    }

    #[test]
    fn literals_that_may_not_lex_are_not_values() {
        // `\\u` needs four hex digits, `\\0` is a NUL: PostgreSQL refuses the
        // whole text; a bit string holds only its digits.
        expect(
            "INSERT INTO t VALUES (E'a\\nb'), (E'\\\\ \\''), (E'\\q'), (E'x\\uzz'), (E'\\0'), (B'102'), (X'0g')",
            Some("INSERT INTO t VALUES (E'a\\nb'), (E'x\\uzz'), (E'\\0'), (B'102'), (X'0g')"),
        );
    }

    #[test]
    fn numbers_are_read_strictly() {
        for ok in [
            "1", "1.5", ".5", "1e-5", "1E+10", "1_000", "0x1F", "0o17", "0b101", "1.e3",
        ] {
            assert_eq!(number(ok.as_bytes(), 0), Some(ok.len()), "{ok}");
        }
        for bad in ["1abc", "1.2.3", "1'x'", "1$", "12é", "0x", "0b "] {
            assert_eq!(number(bad.as_bytes(), 0), None, "{bad}");
        }
    }
}
