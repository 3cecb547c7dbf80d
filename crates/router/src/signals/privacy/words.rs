//! Word-level helpers for the privacy detector: word boundaries, clause breaks, and iterators
//! over the words before and after a position.

pub(super) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '\'' || c == '’' || c == '-'
}

/// Ends a clause: first person before it does not reach a topic after it.
pub(super) fn clause_break(c: char, after: Option<char>) -> bool {
    match c {
        '!' | '?' | ';' | '\n' | '\r' => true,
        '.' | '…' => after.is_none_or(char::is_whitespace),
        _ => false,
    }
}

/// Apostrophes and dashes at the edges are punctuation, not part of the word.
pub(super) fn trim_word(w: &str) -> &str {
    w.trim_matches(|c| c == '\'' || c == '’' || c == '-')
}

/// The words before `pos`, nearest first, up to the start of the clause, with their offsets.
pub(super) struct WordsBack<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> WordsBack<'a> {
    pub(super) fn new(text: &'a str, pos: usize) -> Self {
        let pos = if text.is_char_boundary(pos) { pos } else { 0 };
        Self { text, pos }
    }
}

impl<'a> Iterator for WordsBack<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        loop {
            let head = self.text.get(..self.pos)?;
            let mut word_end = None;
            let mut after = self.text.get(self.pos..).and_then(|r| r.chars().next());
            for (i, c) in head.char_indices().rev() {
                if is_word_char(c) {
                    word_end = Some(i + c.len_utf8());
                    break;
                }
                if clause_break(c, after) {
                    self.pos = 0;
                    return None;
                }
                after = Some(c);
            }
            let Some(end) = word_end else {
                self.pos = 0;
                return None;
            };
            let mut start = end;
            for (i, c) in head.get(..end)?.char_indices().rev() {
                if is_word_char(c) {
                    start = i;
                } else {
                    break;
                }
            }
            self.pos = start;
            let raw = head.get(start..end)?;
            let w = trim_word(raw);
            if w.is_empty() {
                if start == 0 {
                    return None;
                }
                continue;
            }
            let offset = start + (raw.len() - raw.trim_start_matches(['\'', '’', '-']).len());
            return Some((offset, w));
        }
    }
}

/// The words after `pos`, nearest first, up to the end of the clause.
pub(super) struct WordsFwd<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> WordsFwd<'a> {
    pub(super) fn new(text: &'a str, pos: usize) -> Self {
        let pos = if text.is_char_boundary(pos) {
            pos
        } else {
            text.len()
        };
        Self { text, pos }
    }
}

impl<'a> Iterator for WordsFwd<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        loop {
            let tail = self.text.get(self.pos..)?;
            let mut chars = tail.char_indices().peekable();
            let mut start = None;
            while let Some((i, c)) = chars.next() {
                if is_word_char(c) {
                    start = Some(i);
                    break;
                }
                if clause_break(c, chars.peek().map(|(_, c)| *c)) {
                    self.pos = self.text.len();
                    return None;
                }
            }
            let Some(start) = start else {
                self.pos = self.text.len();
                return None;
            };
            let end = tail
                .get(start..)?
                .char_indices()
                .find(|(_, c)| !is_word_char(*c))
                .map_or(tail.len(), |(i, _)| start + i);
            self.pos += end;
            let raw = tail.get(start..end)?;
            let w = trim_word(raw);
            if w.is_empty() {
                continue;
            }
            let lead = raw.len() - raw.trim_start_matches(['\'', '’', '-']).len();
            let offset = self.pos - end + start + lead;
            return Some((offset, w));
        }
    }
}

/// `w` equals the lowercase ASCII `target`, ignoring case and reading ’ as '.
pub(super) fn eq_word(w: &str, target: &str) -> bool {
    if w.is_ascii() {
        return w.eq_ignore_ascii_case(target);
    }
    // A word with a letter outside ASCII never equals an ASCII word (’ reads as ' and is the
    // one exception): skip the Unicode case folding, which dominates scans of non-English
    // text otherwise.
    if target.is_ascii() && w.chars().any(|c| !c.is_ascii() && c != '’') {
        return false;
    }
    let mut a = w.chars().map(|c| if c == '’' { '\'' } else { c });
    let mut b = target.chars();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                if x != y && !x.to_lowercase().eq(y.to_lowercase()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// `w` (or `w` without a possessive 's) is one of `list`.
pub(super) fn is_any(w: &str, list: &[&str]) -> bool {
    if w.is_empty() {
        return false;
    }
    let any = |w: &str| {
        if w.is_ascii() {
            // The common case, decided without Unicode: equal lengths, then bytes.
            list.iter()
                .any(|t| t.len() == w.len() && t.eq_ignore_ascii_case(w))
        } else {
            let foreign = w.chars().any(|c| !c.is_ascii() && c != '’');
            list.iter()
                .any(|t| (!foreign || !t.is_ascii()) && eq_word(w, t))
        }
    };
    if any(w) {
        return true;
    }
    let stem = w
        .strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .or_else(|| w.strip_suffix("'S"));
    stem.is_some_and(|s| !s.is_empty() && any(s))
}

pub(super) fn word_start(bytes: &[u8], i: usize) -> bool {
    i == 0 || !bytes.get(i - 1).is_some_and(|b| b.is_ascii_alphanumeric())
}

pub(super) fn word_end(bytes: &[u8], i: usize) -> bool {
    // Terms ending in a space or punctuation carry their own boundary.
    let last = if i > 0 { bytes.get(i - 1) } else { None };
    if last.is_some_and(|b| !b.is_ascii_alphanumeric()) {
        return true;
    }
    // Allow plurals ("symptoms", "loans") but not longer words ("stdout" is not a disease).
    match bytes.get(i) {
        None => true,
        Some(b's' | b'S') => !bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric()),
        Some(b) => !b.is_ascii_alphanumeric(),
    }
}

/// `std::`, `std.`, `std<`, `std_`: code, not a diagnosis.
pub(super) fn glued_to_code(bytes: &[u8], end: usize) -> bool {
    matches!(
        bytes.get(end),
        Some(b':' | b'.' | b'<' | b'_' | b'(' | b'/')
    ) && bytes.get(end + 1).is_some_and(|b| !b.is_ascii_whitespace())
}

/// The end of a stem's word: up to three more letters after `end` (a case ending).
pub(super) fn stem_end(text: &str, end: usize) -> usize {
    let mut e = end;
    for (n, c) in text.get(end..).unwrap_or("").chars().enumerate() {
        if n >= 3 || !c.is_alphabetic() {
            break;
        }
        e += c.len_utf8();
    }
    e
}

/// Whether a non-ASCII letter touches `start..end`: a word of another script is not cut out
/// of a longer one ("рак" is not in "ракета"). ASCII neighbours are judged by
/// [`word_start`] and [`word_end`].
pub(super) fn letters_around(text: &str, start: usize, end: usize) -> bool {
    let foreign_letter = |c: char| !c.is_ascii() && c.is_alphabetic();
    let before = text.get(..start).and_then(|h| h.chars().next_back());
    let after = text.get(end..).and_then(|t| t.chars().next());
    before.is_some_and(foreign_letter) || after.is_some_and(foreign_letter)
}
