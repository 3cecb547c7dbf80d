//! Dates of birth: a date given right after a birth word, in numeric or written form, in
//! English, German, French, Spanish, Italian and Russian.

/// Words that announce a date of birth. Found by the word automaton; the date must follow
/// within a few filler words ([`BIRTH_TAIL`]).
pub(super) const BIRTH_CUES: &[&str] = &[
    "date of birth",
    "birth date",
    "birthdate",
    "dob",
    "d.o.b.",
    "d.o.b",
    "born on",
    "born",
    "birthday",
    "geburtsdatum",
    "geboren am",
    "geboren",
    "geb.",
    "date de naissance",
    "né le",
    "née le",
    "né",
    "née",
    "fecha de nacimiento",
    "nací el",
    "naci el",
    "nacido el",
    "nacida el",
    "data di nascita",
    "nato il",
    "nata il",
    "дата рождения",
    "родился",
    "родилась",
    "день рождения",
];

/// What follows a birth cue: a few filler words, then the date. Written months are checked in
/// code ([`birth_date_ok`]).
pub(super) const BIRTH_TAIL: &str = r"(?x)
    ^(?:[\t\x20]*(?:(?i:is|was|ist|war|est|es|on|the|am|le|el|il|en|à|a|:|=|-|–|—|,|\(|of)))*
    [\t\x20]*
    (?P<d>
        \d{1,2}[./\-]\d{1,2}[./\-](?:\d{4}|\d{2})
      | \d{4}[./\-]\d{1,2}[./\-]\d{1,2}
      | \d{1,2}(?:st|nd|rd|th|er|\.|º)?[\t\x20]+(?:de[\t\x20]+)?\p{L}{3,12}\.?,?(?:[\t\x20]+de)?[\t\x20]+\d{4}
      | \p{L}{3,12}\.?[\t\x20]+\d{1,2}(?:st|nd|rd|th)?,?[\t\x20]+\d{4}
    )
    (?:$|[^\d\p{L}])
";

/// Birth cues that are verbs, which may follow the date ("am 12. Juni 1985 geboren").
pub(super) const BIRTH_VERBS: &[&str] = &["born", "geboren", "родился", "родилась"];

/// A date that ends right before `pos`, after at most a year word ("1991 года"): its span.
pub(super) fn date_before(text: &str, pos: usize) -> Option<(usize, usize)> {
    static HEAD: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?x)
            (?:^|[^\d\p{L}])
            (?P<d>
                \d{1,2}[./\-]\d{1,2}[./\-](?:\d{4}|\d{2})
              | \d{4}[./\-]\d{1,2}[./\-]\d{1,2}
              | \d{1,2}(?:st|nd|rd|th|er|\.|º)?[\t\x20]+(?:de[\t\x20]+)?\p{L}{3,12}\.?,?(?:[\t\x20]+de)?[\t\x20]+\d{4}
              | \p{L}{3,12}\.?[\t\x20]+\d{1,2}(?:st|nd|rd|th)?,?[\t\x20]+\d{4}
            )
            (?:[\t\x20]+(?:года|г\.|year))?
            [\t\x20,]*$",
        )
        .ok()
    });
    let mut from = pos.saturating_sub(48);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let head = text.get(from..pos)?;
    let d = HEAD.as_ref()?.captures(head)?.name("d")?;
    birth_date_ok(d.as_str()).then_some((from + d.start(), from + d.end()))
}

/// The first three letters of month names (and their common abbreviations) in the languages
/// above, lowercase.
const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "mär",
    "mae", "mai", "okt", "dez", "fév", "fev", "avr", "jui", "aoû", "aou", "déc", "ene", "abr",
    "ago", "set", "dic", "gen", "mag", "giu", "lug", "ott", "янв", "фев", "мар", "апр", "мая",
    "май", "июн", "июл", "авг", "сен", "окт", "ноя", "дек",
];

/// Whether a captured date is one: numbers in range, a written month a month.
pub(super) fn birth_date_ok(date: &str) -> bool {
    let numbers: Vec<u32> = date
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    let word: String = date
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 3)
        .find(|w| !matches!(*w, "st" | "nd" | "rd" | "th" | "de"))
        .map(str::to_lowercase)
        .unwrap_or_default();
    if word.is_empty() {
        // Numeric: a day and a month of at most 31, one of them at most 12, a year.
        return match numbers.as_slice() {
            [y, a, b] if *y >= 1000 => (1..=12).contains(a) && (1..=31).contains(b),
            [a, b, _] => (1..=31).contains(a) && (1..=31).contains(b) && (*a <= 12 || *b <= 12),
            _ => false,
        };
    }
    let prefix: String = word.chars().take(3).collect();
    MONTHS.contains(&prefix.as_str()) && numbers.first().is_some_and(|d| (1..=31).contains(d))
}
