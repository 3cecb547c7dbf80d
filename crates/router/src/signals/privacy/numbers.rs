//! Numbers in text: one pass over digit groups that finds payment cards (issuer, length,
//! Luhn), IBANs (country length, mod-97), national identifiers, phone numbers and IP
//! addresses, and the checksums they use.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Run {
    pub(super) fn len(self) -> usize {
        self.end - self.start
    }
}

/// The position of the first ASCII digit at or after `from`. Prose has few digits, so this
/// skips eight bytes at a time.
pub(super) fn next_digit(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // Digits become 0..=9; a byte below 10 sets its high bit in `(x - 10) & !x`.
        let x = u64::from_le_bytes(word) ^ (0x30 * ONES);
        if x.wrapping_sub(10 * ONES) & !x & HIGHS != 0 {
            break;
        }
        i += 8;
    }
    bytes
        .get(i..)?
        .iter()
        .position(u8::is_ascii_digit)
        .map(|k| i + k)
}

/// How many bytes separate two digit groups at `at`, or 0 when the region ends there.
pub(super) fn separator_len(bytes: &[u8], at: usize) -> usize {
    let b = |k: usize| bytes.get(at + k).copied();
    let digit = |k: usize| b(k).is_some_and(|c| c.is_ascii_digit());
    match (b(0), b(1)) {
        (Some(b' ' | b'-' | b'.' | b'/' | b')' | b'('), _) if digit(1) => 1,
        (Some(b')'), Some(b' ' | b'-' | b'.')) | (Some(b' ' | b'-'), Some(b'(')) if digit(2) => 2,
        _ => 0,
    }
}

pub(super) struct Region<'a> {
    pub(super) text: &'a str,
    pub(super) runs: &'a [Run],
}

impl Region<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    pub(super) fn run(&self, k: usize) -> Option<Run> {
        self.runs.get(k).copied()
    }

    /// The separator between run `k - 1` and run `k`.
    pub(super) fn sep(&self, k: usize) -> &str {
        match (k.checked_sub(1).and_then(|p| self.run(p)), self.run(k)) {
            (Some(a), Some(b)) => self.text.get(a.end..b.start).unwrap_or(""),
            _ => "",
        }
    }

    pub(super) fn digits(&self, from: usize, to: usize, buf: &mut Vec<u8>) {
        buf.clear();
        for k in from..=to {
            if let Some(r) = self.run(k)
                && let Some(d) = self.bytes().get(r.start..r.end)
            {
                buf.extend(d.iter().map(|b| b - b'0'));
            }
        }
    }

    pub(super) fn value(&self, k: usize) -> u64 {
        self.run(k)
            .and_then(|r| self.text.get(r.start..r.end))
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    }

    pub(super) fn mark(&self, used: &mut [bool], start: usize, end: usize) {
        for (k, r) in self.runs.iter().enumerate() {
            if r.start >= start
                && r.end <= end
                && let Some(u) = used.get_mut(k)
            {
                *u = true;
            }
        }
    }

    pub(super) fn classify(&self, used: &mut [bool], sink: &mut Sink<'_>) {
        self.letter_led(used, sink);
        self.cards(used, sink);
        self.ids(used, sink);
        self.ips(used, sink);
        self.phones(used, sink);
    }

    /// IBANs, UK National Insurance numbers and Italian tax codes start with letters just
    /// before the region.
    pub(super) fn letter_led(&self, used: &mut [bool], sink: &mut Sink<'_>) {
        let Some(first) = self.run(0) else {
            return;
        };
        let bytes = self.bytes();
        let found = iban_at(bytes, first.start)
            .map(|span| (PiiKind::Iban, span))
            .or_else(|| nino_at(bytes, first.start).map(|span| (PiiKind::NationalId, span)))
            .or_else(|| {
                codice_fiscale_at(bytes, first.start).map(|span| (PiiKind::NationalId, span))
            });
        if let Some((kind, (s, e))) = found
            && sink.claim(kind, s, e)
        {
            self.mark(used, s, e);
        }
    }

    /// Card numbers: an unseparated 13-19 digit group, or groups of 3-6 digits after a
    /// first group of 4, joined by single spaces or dashes, tried at every group boundary.
    pub(super) fn cards(&self, used: &mut [bool], sink: &mut Sink<'_>) {
        let mut buf = Vec::with_capacity(19);
        let mut k = 0;
        while k < self.runs.len() {
            let Some(first) = self.run(k) else {
                break;
            };
            if used.get(k).copied().unwrap_or(true) {
                k += 1;
                continue;
            }
            let mut best = None;
            if (13..=19).contains(&first.len()) {
                self.digits(k, k, &mut buf);
                if card_number_ok(&buf) && self.lone_card_context(k) {
                    best = Some(k);
                }
            } else if first.len() == 4 {
                let mut total = 4;
                // "5381.7839.7052.3279": dots only between groups of four, all of them dots.
                let dotted = self.sep(k + 1) == ".";
                for j in k + 1..self.runs.len() {
                    let Some(r) = self.run(j) else { break };
                    let sep_ok = if dotted {
                        self.sep(j) == "." && r.len() == 4
                    } else {
                        matches!(self.sep(j), " " | "-")
                    };
                    if used.get(j).copied().unwrap_or(true)
                        || !sep_ok
                        // 2: the tail of a 14-digit Diners number written in fours.
                        || !(2..=6).contains(&r.len())
                    {
                        break;
                    }
                    total += r.len();
                    if total > 19 {
                        break;
                    }
                    if total >= 13 {
                        self.digits(k, j, &mut buf);
                        if card_number_ok(&buf) {
                            best = Some(j);
                        }
                    }
                }
            }
            match (best, self.run(best.unwrap_or(k))) {
                (Some(j), Some(last)) => {
                    if sink.claim(PiiKind::Card, first.start, last.end) {
                        self.mark(used, first.start, last.end);
                    }
                    k = j + 1;
                }
                _ => k += 1,
            }
        }
    }

    /// An unseparated long number is a card only outside decimals and id contexts
    /// ("timestamp 1700000000004", "order 4111111111111111" without a card word).
    pub(super) fn lone_card_context(&self, k: usize) -> bool {
        if self.sep(k) == "." || self.sep(k + 1) == "." {
            return false;
        }
        let Some(run) = self.run(k) else {
            return false;
        };
        let bytes = self.bytes();
        let before = run.start.checked_sub(1).and_then(|p| bytes.get(p)).copied();
        if before.is_some_and(|b| b.is_ascii_alphabetic() || b == b'#' || b == b'_') {
            return false;
        }
        if before == Some(b',') || before == Some(b'.') {
            return false;
        }
        let mut cue = false;
        let mut veto = false;
        for (_, w) in WordsBack::new(self.text, run.start).take(4) {
            if is_any(w, CARD_CUES) {
                cue = true;
                break;
            }
            if is_any(w, ID_VETO) {
                veto = true;
            }
        }
        cue || !veto
    }

    /// SSN/ITIN (3-2-4 with dashes), French NIR (15 digits with key), Spanish DNI/NIE.
    pub(super) fn ids(&self, used: &mut [bool], sink: &mut Sink<'_>) {
        let bytes = self.bytes();
        // Dash runs of exactly three groups.
        let mut k = 0;
        while k < self.runs.len() {
            let mut m = k;
            while m + 1 < self.runs.len() && self.sep(m + 1) == "-" {
                m += 1;
            }
            if m == k + 2
                && (k..=m).all(|i| !used.get(i).copied().unwrap_or(true))
                && let (Some(a), Some(b), Some(c)) = (self.run(k), self.run(k + 1), self.run(k + 2))
            {
                let span = self.text.get(a.start..c.end).unwrap_or("");
                if a.len() == 3
                    && b.len() == 2
                    && c.len() == 4
                    && ssn_ok(span)
                    && sink.claim(PiiKind::NationalId, a.start, c.end)
                {
                    self.mark(used, a.start, c.end);
                }
            }
            k = m + 1;
        }
        // French NIR: the whole region, 15 digits, spaces only.
        if used.iter().all(|u| !u) && (1..self.runs.len()).all(|k| self.sep(k) == " ") {
            let mut buf = Vec::with_capacity(16);
            self.digits(0, self.runs.len().saturating_sub(1), &mut buf);
            if buf.len() == 15
                && nir_ok(&buf)
                && let (Some(a), Some(z)) = (self.run(0), self.runs.last())
                && sink.claim(PiiKind::NationalId, a.start, z.end)
            {
                self.mark(used, a.start, z.end);
            }
        }
        // DNI (8 digits + letter) and NIE (X/Y/Z + 7 digits + letter).
        for (k, r) in self.runs.iter().enumerate() {
            if used.get(k).copied().unwrap_or(true) {
                continue;
            }
            if let Some((s, e)) = dni_at(bytes, *r)
                && sink.claim(PiiKind::NationalId, s, e)
                && let Some(u) = used.get_mut(k)
            {
                *u = true;
            }
        }
    }

    /// Dotted quads. Every quad is taken out of the phone and house-number checks; only a
    /// host address on the public internet is a finding: private, loopback, link-local,
    /// shared, multicast and reserved ranges, networks (`.0`, `/24`) and versions identify
    /// nobody.
    pub(super) fn ips(&self, used: &mut [bool], sink: &mut Sink<'_>) {
        let mut k = 0;
        while k < self.runs.len() {
            let mut m = k;
            while m + 1 < self.runs.len() && self.sep(m + 1) == "." {
                m += 1;
            }
            if m == k + 3
                && let (Some(a), Some(z)) = (self.run(k), self.run(m))
                && let Some(public) = self.quad(k, used)
            {
                if public {
                    sink.claim(PiiKind::IpAddress, a.start, z.end);
                }
                self.mark(used, a.start, z.end);
            }
            k = m + 1;
        }
    }

    /// `None` when runs `k..k + 4` are not an IPv4 address at all; otherwise whether it is a
    /// public host address outside a version context.
    pub(super) fn quad(&self, k: usize, used: &[bool]) -> Option<bool> {
        let lens_ok = (k..k + 4).all(|i| {
            self.run(i).is_some_and(|r| r.len() <= 3) && !used.get(i).copied().unwrap_or(true)
        });
        let o = [
            self.value(k),
            self.value(k + 1),
            self.value(k + 2),
            self.value(k + 3),
        ];
        if !lens_ok || o.iter().any(|x| *x > 255) {
            return None;
        }
        let first = self.run(k)?;
        let last = self.run(k + 3)?;
        let bytes = self.bytes();
        let before = first
            .start
            .checked_sub(1)
            .and_then(|p| bytes.get(p))
            .copied();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return None;
        }
        let version = WordsBack::new(self.text, first.start)
            .take(2)
            .any(|(_, w)| is_any(w, VERSION_WORDS));
        let network = bytes.get(last.end) == Some(&b'/') || o[3] == 0;
        let private = matches!(o, [0 | 10 | 127, ..] | [192, 168, ..] | [169, 254, ..])
            || (o[0] == 172 && (16..=31).contains(&o[1]))
            || (o[0] == 100 && (64..=127).contains(&o[1]))
            || o[0] >= 224;
        Some(!(version || network || private))
    }

    /// Phone numbers among the groups no other kind took.
    pub(super) fn phones(&self, used: &mut [bool], sink: &mut Sink<'_>) {
        let mut k = 0;
        while k < self.runs.len() {
            if used.get(k).copied().unwrap_or(true) {
                k += 1;
                continue;
            }
            let mut m = k;
            while m + 1 < self.runs.len() && !used.get(m + 1).copied().unwrap_or(true) {
                m += 1;
            }
            if let Some((s, e)) = self.phone(k, m) {
                if sink.claim(PiiKind::Phone, s, e) {
                    self.mark(used, s, e);
                }
            } else {
                self.phones_within(k, m, used, sink);
            }
            k = m + 1;
        }
    }

    /// Two numbers written one after the other ("+44 20 7946 0958 (415) 555-0134") make one
    /// region that is no phone number as a whole: try the numbers that start with `+` or `(`
    /// inside it, longest first.
    fn phones_within(&self, k: usize, m: usize, used: &mut [bool], sink: &mut Sink<'_>) {
        let bytes = self.bytes();
        let mut i = k;
        while i <= m {
            let marked = self
                .run(i)
                .and_then(|r| r.start.checked_sub(1))
                .and_then(|p| bytes.get(p))
                .is_some_and(|b| *b == b'+' || *b == b'(');
            let found = marked
                .then(|| {
                    (i..=m.min(i + 6))
                        .rev()
                        .find_map(|j| self.phone(i, j).map(|span| (j, span)))
                })
                .flatten();
            match found {
                Some((j, (s, e))) => {
                    if sink.claim(PiiKind::Phone, s, e) {
                        self.mark(used, s, e);
                    }
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }

    /// Whether runs `k..=m` are a phone number, and its span. Strong shapes (international
    /// `+`/`00`, North American 3-3-4, national trunk `0...`) need no cue; anything else
    /// needs a cue word nearby ("call", "mobile", "my number") and no id word closer.
    pub(super) fn phone(&self, k: usize, m: usize) -> Option<(usize, usize)> {
        let bytes = self.bytes();
        let first = self.run(k)?;
        let last = self.run(m)?;
        let groups = m - k + 1;
        let total: usize = (k..=m).filter_map(|i| self.run(i)).map(Run::len).sum();
        if !(7..=15).contains(&total) {
            return None;
        }
        let lens: Vec<usize> = (k..=m).filter_map(|i| self.run(i)).map(Run::len).collect();
        let seps: Vec<&str> = (k + 1..=m).map(|i| self.sep(i)).collect();
        let first_digits = self.text.get(first.start..first.end).unwrap_or("");
        let national_prefix = first_digits.starts_with('0') && !first_digits.starts_with("00");
        // German and Austrian "0171/9876543", "030/123 456 78": area code, a slash, the rest.
        let slash_trunk = national_prefix
            && seps.first().is_some_and(|s| *s == "/")
            && seps.iter().skip(1).all(|s| matches!(*s, " " | "-"))
            && (3..=5).contains(&first.len())
            && (9..=12).contains(&total);
        if seps.iter().any(|s| s.contains('/')) && !slash_trunk {
            return None;
        }
        // French "06.12.34.56.78": five pairs joined by dots (after a cue, see below).
        let dotted_pairs = national_prefix
            && lens.len() == 5
            && lens.iter().all(|l| *l == 2)
            && seps.iter().all(|s| *s == ".");
        // Prefix: "+", "(", "+(" directly before the first group.
        let mut start = first.start;
        let mut paren = false;
        if start > 0 && bytes.get(start - 1) == Some(&b'(') {
            start -= 1;
            paren = true;
        }
        let plus = start > 0 && bytes.get(start - 1) == Some(&b'+');
        if plus {
            start -= 1;
        }
        let before = start.checked_sub(1).and_then(|p| bytes.get(p)).copied();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'#') {
            return None;
        }
        if plus && groups == 1 && before.is_some_and(|b| b == b' ') {
            // "3 +14155550134" is arithmetic; "... 1111 +44 20 7946 0958", grouped the way
            // numbers are dialled, is a phone number after another number.
            let prev = text_before_non_space(bytes, start);
            if prev.is_some_and(|b| b.is_ascii_digit() || b == b')') {
                return None;
            }
        }
        let after = bytes.get(last.end).copied();
        if after.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        if self.date_like(k, m) {
            return None;
        }
        let dotted = seps.iter().any(|s| s.contains('.'));
        let spaced_or_dashed = seps.iter().all(|s| matches!(*s, " " | "-"));
        let nanp = matches!(lens.as_slice(), [3, 3, 4])
            || (matches!(lens.as_slice(), [1, 3, 3, 4]) && first_digits == "1");
        let international = plus || (first_digits.starts_with("00") && total >= 10);
        let trunk = (national_prefix
            && (9..=12).contains(&total)
            && (2..=5).contains(&groups)
            && spaced_or_dashed
            && lens.iter().skip(1).all(|l| *l >= 2)
            && (groups < 5 || lens.iter().all(|l| *l == 2)))
            || slash_trunk;
        // Russian and other CIS national numbers: trunk 8, then ten digits, "8 (916) 123-45-67".
        let cis_trunk = first_digits == "8" && total == 11 && groups >= 3 && (paren || groups >= 4);
        let strong = cis_trunk
            || (international && groups <= 6 && total >= 8)
            || (nanp && (paren || !seps.is_empty()))
            || trunk;
        if dotted && !(nanp || international || dotted_pairs) {
            return None;
        }
        if paren && !strong {
            return None;
        }
        // "a phone number like 555-123-4567", "e.g. +1 202 555 0100": a format, not a number.
        let back: Vec<&str> = WordsBack::new(self.text, start)
            .take(2)
            .map(|(_, w)| w)
            .collect();
        // "the format 555-123-4567" (a noun), not "format +49 30 901820" (a verb).
        let format_noun = back
            .first()
            .is_some_and(|w| is_any(w, &["format", "formats"]))
            && back
                .get(1)
                .is_some_and(|w| is_any(w, &["the", "a", "this", "that", "same"]));
        if format_noun || back.iter().any(|w| is_any(w, EXAMPLE_WORDS)) {
            return None;
        }
        let (cue, veto) = phone_context(self.text, start, last.end);
        let accept = if strong {
            // An id word right before the number wins over a cue further back ("numero
            // ordine 347 123 4567", "número de pedido es 408-229-1837").
            match (cue, veto) {
                (_, None) => true,
                (Some(c), Some(v)) => c < v || v >= 3,
                (None, Some(v)) => v >= 1,
            }
        } else if dotted_pairs {
            // Dotted pairs are also versions and OIDs: only after a cue.
            match (cue, veto) {
                (Some(c), Some(v)) => c < v,
                (Some(_), None) => true,
                _ => false,
            }
        } else {
            groups <= 4
                && match (cue, veto) {
                    (Some(c), Some(v)) => c < v,
                    (Some(_), None) => true,
                    _ => false,
                }
        };
        accept.then_some((start, last.end))
    }

    /// 2024-01-15, 15.01.2024, 01/15/24 10:30...
    pub(super) fn date_like(&self, k: usize, m: usize) -> bool {
        let year = |i: usize| (1900..=2099).contains(&self.value(i));
        let small = |i: usize, max: u64| {
            self.run(i).is_some_and(|r| r.len() <= 2) && (1..=max).contains(&self.value(i))
        };
        let n = m - k + 1;
        (n >= 3 && year(k) && small(k + 1, 12) && small(k + 2, 31))
            || ((2..=3).contains(&n) && year(m) && small(m - 1, 31) && (n == 2 || small(m - 2, 31)))
            || (n >= 3 && year(k + 2) && small(k, 31) && small(k + 1, 31))
    }
}

pub(super) fn text_before_non_space(bytes: &[u8], pos: usize) -> Option<u8> {
    bytes
        .get(..pos)?
        .iter()
        .rev()
        .find(|b| **b != b' ')
        .copied()
}

/// The nearest phone cue and id word around a number, as word distances before it (cues
/// after the number count as distance 0: "4155550134 (mobile)").
pub(super) fn phone_context(
    text: &str,
    start: usize,
    end: usize,
) -> (Option<usize>, Option<usize>) {
    let mut cue = None;
    let mut veto = None;
    // A cue three words away at most: "call me at ...", "my phone number is ...", not "call
    // the function foo with ...".
    let words: Vec<&str> = WordsBack::new(text, start)
        .take(4)
        .map(|(_, w)| w)
        .collect();
    for (i, w) in words.iter().enumerate() {
        let number_cue =
            (eq_word(w, "number") || eq_word(w, "no") || eq_word(w, "nr") || eq_word(w, "numbers"))
                && words.get(i + 1).is_some_and(|p| {
                    is_any(p, POSSESSIVES) || is_any(p, PHONE_CUES) || is_any(p, PHONE_OWNERS)
                });
        if cue.is_none() && (is_any(w, PHONE_CUES) || number_cue) {
            cue = Some(i);
        }
        if veto.is_none() && is_any(w, ID_VETO) {
            veto = Some(i);
        }
    }
    if cue.is_none()
        && WordsFwd::new(text, end)
            .take(3)
            .any(|(_, w)| is_any(w, PHONE_CUES))
    {
        cue = Some(0);
    }
    (cue, veto)
}

/// An IBAN starting two letters before `digits_start`: the country's length when known,
/// otherwise the longest prefix ending on a group boundary that passes mod-97.
pub(super) fn iban_at(bytes: &[u8], digits_start: usize) -> Option<(usize, usize)> {
    let start = digits_start.checked_sub(2)?;
    let cc = bytes.get(start..digits_start)?;
    if !cc.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    if start > 0
        && bytes
            .get(start - 1)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return None;
    }
    let check = bytes.get(digits_start..digits_start + 2)?;
    if !check.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let upper = cc.iter().all(u8::is_ascii_uppercase);
    let country = [
        cc.first()?.to_ascii_uppercase(),
        cc.get(1)?.to_ascii_uppercase(),
    ];
    let known = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| c.as_bytes() == country)
        .map(|(_, l)| *l);
    if !upper && known.is_none() {
        return None;
    }
    // Collect up to 34 characters with the group boundaries (compact length, byte end).
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut boundaries: Vec<(usize, usize)> = Vec::with_capacity(12);
    let mut i = start;
    loop {
        let group_start = i;
        while let Some(b) = bytes.get(i).filter(|b| b.is_ascii_alphanumeric()) {
            if n >= compact.len() {
                return finish_iban(&compact, n, &boundaries, known, start);
            }
            if let Some(slot) = compact.get_mut(n) {
                *slot = b.to_ascii_uppercase();
            }
            n += 1;
            i += 1;
        }
        if i == group_start {
            break;
        }
        boundaries.push((n, i));
        let sep = bytes.get(i).copied();
        if matches!(sep, Some(b' ' | b'-'))
            && bytes.get(i + 1).is_some_and(u8::is_ascii_alphanumeric)
        {
            i += 1;
        } else {
            break;
        }
    }
    finish_iban(&compact, n, &boundaries, known, start)
}

pub(super) fn finish_iban(
    compact: &[u8; 34],
    n: usize,
    boundaries: &[(usize, usize)],
    known: Option<usize>,
    start: usize,
) -> Option<(usize, usize)> {
    let valid = |len: usize| compact.get(..len).is_some_and(iban_compact_ok);
    match known {
        Some(len) => boundaries
            .iter()
            .find(|(l, _)| *l == len)
            .filter(|_| len <= n && valid(len))
            .map(|(_, e)| (start, *e)),
        None => boundaries
            .iter()
            .rev()
            .filter(|(l, _)| (15..=34).contains(l))
            .find(|(l, _)| valid(*l))
            .map(|(_, e)| (start, *e)),
    }
}

/// "QQ 12 34 56 C" / "AB123456C": two letters, six digits, a letter A-D.
pub(super) fn nino_at(bytes: &[u8], digits_start: usize) -> Option<(usize, usize)> {
    let spaced = digits_start >= 1 && bytes.get(digits_start - 1) == Some(&b' ');
    let letters_end = if spaced {
        digits_start - 1
    } else {
        digits_start
    };
    let start = letters_end.checked_sub(2)?;
    let letters = bytes.get(start..letters_end)?;
    if !letters.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    if start > 0 && bytes.get(start - 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    // Six digits, either together or as 2-2-2 with single spaces.
    let mut i = digits_start;
    let mut digits = 0;
    while digits < 6 {
        match bytes.get(i) {
            Some(b) if b.is_ascii_digit() => {
                digits += 1;
                i += 1;
            }
            Some(b' ')
                if digits % 2 == 0
                    && digits > 0
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) =>
            {
                i += 1;
            }
            _ => return None,
        }
    }
    if bytes.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if bytes.get(i) == Some(&b' ') && bytes.get(i + 1).is_some_and(|b| (b'A'..=b'D').contains(b)) {
        i += 1;
    }
    let suffix = bytes.get(i).copied()?;
    if !(b'A'..=b'D').contains(&suffix) {
        return None;
    }
    if bytes.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    Some((start, i + 1))
}

/// Italian codice fiscale: `RSSMRA85T10A562S` (6 letters, 2 digits, letter, 2 digits,
/// letter, 3 digits, letter).
pub(super) fn codice_fiscale_at(bytes: &[u8], digits_start: usize) -> Option<(usize, usize)> {
    let start = digits_start.checked_sub(6)?;
    let cf = bytes.get(start..start + 16)?;
    if start > 0 && bytes.get(start - 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    if bytes.get(start + 16).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let shape = b"LLLLLLDDLDDLDDDL";
    let ok = cf.iter().zip(shape.iter()).all(|(b, s)| match s {
        b'L' => b.is_ascii_uppercase(),
        _ => b.is_ascii_digit(),
    });
    ok.then_some((start, start + 16))
}

/// Spanish DNI `12345678Z` or NIE `X1234567L`, with the check letter.
pub(super) fn dni_at(bytes: &[u8], run: Run) -> Option<(usize, usize)> {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    if !(7..=8).contains(&run.len()) {
        return None;
    }
    let digits = bytes.get(run.start..run.end)?;
    let mut number: u64 = digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
    let mut start = run.start;
    match run.len() {
        8 => {}
        7 => {
            let prefix = run
                .start
                .checked_sub(1)
                .and_then(|p| bytes.get(p))
                .copied()?;
            let lead = match prefix {
                b'X' => 0,
                b'Y' => 1,
                b'Z' => 2,
                _ => return None,
            };
            number += lead * 10_000_000;
            start -= 1;
        }
        _ => return None,
    }
    if start > 0 && bytes.get(start - 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut i = run.end;
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    let letter = bytes.get(i).copied()?;
    if bytes.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let expected = LETTERS.get(usize::try_from(number % 23).ok()?).copied()?;
    (letter == expected).then_some((start, i + 1))
}

/// French NIR: sex digit, then 12 digits, then the key `97 - n mod 97`.
pub(super) fn nir_ok(digits: &[u8]) -> bool {
    let Some(&sex) = digits.first() else {
        return false;
    };
    if !matches!(sex, 1 | 2 | 3 | 4 | 7 | 8) || digits.len() != 15 {
        return false;
    }
    let n = digits
        .iter()
        .take(13)
        .fold(0u64, |n, d| n * 10 + u64::from(*d));
    let key = digits
        .iter()
        .skip(13)
        .fold(0u64, |n, d| n * 10 + u64::from(*d));
    key == 97 - n % 97
}

/// Card brands by issuer prefix and length (Visa, Mastercard, Amex, Discover, JCB, Diners,
/// UnionPay, Maestro, Mir, RuPay).
pub(super) fn card_brand_ok(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| d.iter().take(k).fold(0u32, |p, x| p * 10 + u32::from(*x));
    let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
    let visa = p1 == 4 && matches!(n, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16;
    let amex = (p2 == 34 || p2 == 37) && n == 15;
    let discover =
        (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || (622_126..=622_925).contains(&p6))
            && (16..=19).contains(&n);
    let jcb = (3528..=3589).contains(&p4) && (16..=19).contains(&n);
    let diners = ((300..=305).contains(&p3) || p4 == 3095 || p2 == 36 || p2 == 38 || p2 == 39)
        && (14..=19).contains(&n);
    let unionpay = p2 == 62 && (16..=19).contains(&n);
    let maestro = (matches!(
        p4,
        5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763
    ) || (56..=58).contains(&p2))
        && (13..=19).contains(&n);
    let mir = (2200..=2204).contains(&p4) && (16..=19).contains(&n);
    let rupay = (p2 == 60 || p2 == 81 || p2 == 82 || p3 == 508) && n == 16;
    visa || mastercard || amex || discover || jcb || diners || unionpay || maestro || mir || rupay
}

pub(super) fn card_number_ok(digits: &[u8]) -> bool {
    card_brand_ok(digits) && luhn_digits(digits)
}

pub(super) fn luhn_digits(digits: &[u8]) -> bool {
    let Some(&first) = digits.first() else {
        return false;
    };
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == first) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The Luhn checksum of a 13-19 digit number (separators ignored). Issuer prefixes are not
/// checked here; the detector checks them too.
pub fn luhn_ok(s: &str) -> bool {
    let digits: Vec<u8> = s
        .chars()
        .filter_map(|c| c.to_digit(10))
        .filter_map(|d| u8::try_from(d).ok())
        .collect();
    luhn_digits(&digits)
}

/// The ISO 13616 mod-97 check of an IBAN (spaces ignored).
pub fn iban_ok(s: &str) -> bool {
    let compact: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    (15..=34).contains(&compact.len()) && iban_compact_ok(&compact)
}

pub(super) fn iban_compact_ok(compact: &[u8]) -> bool {
    let (Some(head), Some(tail)) = (compact.get(..4), compact.get(4..)) else {
        return false;
    };
    if !head
        .get(..2)
        .is_some_and(|c| c.iter().all(u8::is_ascii_uppercase))
        || !head
            .get(2..)
            .is_some_and(|c| c.iter().all(u8::is_ascii_digit))
    {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head.iter()) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

pub(super) fn ssn_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [area, group, serial] => {
            if *group == "00" || *serial == "0000" || *area == "000" || *area == "666" {
                return false;
            }
            if area.starts_with('9') {
                // ITIN: 9xx-(50-65|70-88|90-92|94-99)-xxxx.
                let g: u32 = group.parse().unwrap_or(0);
                return matches!(g, 50..=65 | 70..=88 | 90..=92 | 94..=99);
            }
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Street addresses
