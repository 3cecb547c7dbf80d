//! How privacy-sensitive a request is: personal data found by validated detectors, sensitive
//! topics spoken of in the first person, the app's own labels and the policy's own patterns.
//!
//! Structured identifiers are found by a few linear passes (one hand-written scan over the
//! numbers in the text, one over its `@` signs, one over its colons, dashes and dots for IPv6
//! and MAC addresses, regular expressions for keys, credentials, cue words and street names,
//! one word automaton for every dictionary) and then *validated*: payment cards need a real
//! issuer prefix and length and the Luhn check, IBANs their country's length and mod-97, IPv6
//! addresses must parse and be global unicast, phone numbers a recognisable national or
//! international shape (or a cue such as "call" nearby), national ids a checksum or a cue such
//! as "passport number", dates of birth a birth word before them ("DOB", "né le", "дата
//! рождения"). Groups of digits are tried on their group boundaries, so a card followed by its
//! CVV or preceded by a room number is still a card, and an IBAN followed by "BIC ..." is
//! still an IBAN.
//!
//! Topics ([`Topic`]: health, finances, legal, sexuality, religion, work) come from
//! dictionaries in English, German, French, Spanish, Italian, Russian and a little
//! Portuguese, which a policy can extend (`[privacy.topics]`), and count as personal only when
//! the *writer* is their subject or possessor within the same clause ("I was diagnosed with",
//! "my loan", "у меня долги"), not when they ask about them ("help me write an essay about
//! cancer research", "I'm building a loan calculator"), and never in system or assistant
//! messages, which describe the app rather than the user.
//!
//! A policy's own patterns (`[[privacy.patterns]]`) are found in one pass of a `RegexSet`,
//! then only the patterns that matched run to find their spans.
//!
//! Each finding has a kind, a category (see [`PrivacyDetector::category`]), a weight and a
//! span; the score is the noisy-or of the weights, `1 - Π(1 - w)`, so every further finding
//! can only raise it. Impersonal mentions of topics count once per distinct topic and
//! together at most [`MENTION_CAP`], so an essay that names many diseases stays shareable.
//! Structured findings can be redacted (see [`crate::redact`]); topics cannot, because they
//! are the meaning. Findings hold offsets, never text, so they can be logged.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use elmroute_core::{CategoryCount, ChatRequest, Role, Sensitivity};
use regex::{Regex, RegexSet, RegexSetBuilder};
use serde::Serialize;

use crate::policy::{CUSTOM_SIZE_LIMIT, PolicyError, PrivacyPolicy, compile_custom};

mod dates;
mod lexicon;
mod network;
mod numbers;
mod topics;
mod words;

use dates::*;
use lexicon::*;
use network::*;
use numbers::*;
use topics::MORE_TERMS;
use words::*;

pub use topics::Topic;

pub use numbers::{iban_ok, luhn_ok};

/// The kinds of private data the detector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// An API key, token, private key, a password in a URL or a credential that is given
    /// (`my password is ...`, `api_key = "..."`).
    Secret,
    /// A payment card number with an issuer prefix and length that passes the Luhn check.
    Card,
    /// An IBAN with its country's length that passes the mod-97 check.
    Iban,
    /// A national identifier: a US SSN or ITIN, a UK National Insurance number, a Spanish
    /// DNI/NIE, an Italian codice fiscale, a French NIR, or any number given after a cue such
    /// as "passport number" or "SSN".
    NationalId,
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A street address.
    Address,
    /// An IPv4 or IPv6 address of a host on the public internet (not loopback, private,
    /// link-local, multicast or a network).
    IpAddress,
    /// A hardware (MAC) address, `00:1A:2B:3C:4D:5E` or `00-1a-2b-3c-4d-5e`.
    MacAddress,
    /// A date given after a birth word ("born on", "DOB", "date de naissance", "дата
    /// рождения").
    DateOfBirth,
    /// A match of the policy's custom pattern with this index (`[[privacy.patterns]]`) whose
    /// category is not a built-in one.
    Custom(u16),
    /// Health, sex, abuse, self-harm, legal, money or work matters spoken of in the first
    /// person.
    SensitiveTopic,
    /// A sensitive topic mentioned impersonally ("what is diabetes?").
    TopicMention,
}

impl PiiKind {
    /// How much one finding of this kind counts toward the privacy score.
    pub fn weight(self) -> f32 {
        match self {
            PiiKind::Secret | PiiKind::Card | PiiKind::Iban | PiiKind::NationalId => 1.0,
            PiiKind::SensitiveTopic => 0.75,
            PiiKind::Email | PiiKind::Phone | PiiKind::Address | PiiKind::DateOfBirth => 0.5,
            PiiKind::Custom(_) => 0.5,
            PiiKind::IpAddress | PiiKind::MacAddress => 0.3,
            PiiKind::TopicMention => 0.1,
        }
    }

    /// Whether spans of this kind can be replaced by a placeholder without losing the ask.
    pub fn redactable(self) -> bool {
        !matches!(self, PiiKind::SensitiveTopic | PiiKind::TopicMention)
    }

    /// The placeholder label (`EMAIL` in `[EMAIL_1]`).
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Secret => "SECRET",
            PiiKind::Card => "CARD",
            PiiKind::Iban => "IBAN",
            PiiKind::NationalId => "ID",
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::Address => "ADDRESS",
            PiiKind::IpAddress => "IP",
            PiiKind::MacAddress => "MAC",
            PiiKind::DateOfBirth => "DOB",
            PiiKind::Custom(_) => "PRIVATE",
            PiiKind::SensitiveTopic => "TOPIC",
            PiiKind::TopicMention => "MENTION",
        }
    }

    /// The category name of a built-in kind, as in routes and policies (`email`,
    /// `national_id`). Topics are named by their [`Topic`] instead, and custom patterns by
    /// their policy's category.
    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Secret => "secret",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::NationalId => "national_id",
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Address => "address",
            PiiKind::IpAddress => "ip_address",
            PiiKind::MacAddress => "mac_address",
            PiiKind::DateOfBirth => "date_of_birth",
            PiiKind::Custom(_) => "custom",
            PiiKind::SensitiveTopic => "sensitive_topic",
            PiiKind::TopicMention => "topic_mention",
        }
    }

    /// The built-in redactable kind with this category name, if any: a custom pattern whose
    /// category is `national_id` finds national ids.
    pub fn from_name(name: &str) -> Option<PiiKind> {
        [
            PiiKind::Secret,
            PiiKind::Card,
            PiiKind::Iban,
            PiiKind::NationalId,
            PiiKind::Email,
            PiiKind::Phone,
            PiiKind::Address,
            PiiKind::IpAddress,
            PiiKind::MacAddress,
            PiiKind::DateOfBirth,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// The most that impersonal topic mentions add to a score, however many there are. Below
/// the shipped policies' `redact_above` (0.3), so talking *about* sensitive subjects never by
/// itself costs a request its cloud answer.
pub const MENTION_CAP: f32 = 0.25;

/// One finding: its kind, category, weight and where it is. Never holds the text itself, so
/// findings can be logged safely.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Finding {
    /// What was found.
    pub kind: PiiKind,
    /// What a sensitive topic (or a mention of one) is about; `None` for other kinds.
    pub topic: Option<Topic>,
    /// How much it counts toward the score, 0..=1 (the kind's weight, or a custom
    /// pattern's).
    pub weight: f32,
    /// The index of the message in the request.
    pub message: usize,
    /// Byte offsets in that message.
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
}

/// The privacy signal of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PrivacyReport {
    /// 0..=1.
    pub score: f32,
    /// The score that remains once the redactable findings are replaced: what the cloud
    /// would still learn from a redacted request. 0..=1, never above `score`.
    pub residual: f32,
    /// Every finding, in message order then position.
    pub findings: Vec<Finding>,
    /// Categories and counts of the findings that count as private (impersonal topic
    /// mentions do not), sorted by name. What a route may carry: never a value.
    pub categories: Vec<CategoryCount>,
}

impl PrivacyReport {
    /// How many findings could be redacted.
    pub fn redactable(&self) -> usize {
        self.findings.iter().filter(|f| f.kind.redactable()).count()
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled detectors

/// Keys and tokens with a fixed, documented shape. Each alternative starts with a literal, so
/// the whole set is searched with a literal prefilter.
const TOKENS: &str = r"(?x)
      (?-u:\b)(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}
    | (?-u:\b)(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}
    | (?-u:\b)(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}(?-u:\b)
    | (?-u:\b)gh[pousr]_[A-Za-z0-9]{30,}
    | (?-u:\b)github_pat_[A-Za-z0-9_]{22,}
    | (?-u:\b)glpat-[A-Za-z0-9_\-]{20,}
    | (?-u:\b)xox[abposr]-[A-Za-z0-9\-]{10,}
    | hooks\.slack\.com/services/[A-Za-z0-9/]{20,}
    | (?-u:\b)AIza[0-9A-Za-z_\-]{30,}
    | (?-u:\b)ya29\.[0-9A-Za-z_\-]{20,}
    | (?-u:\b)hf_[A-Za-z0-9]{30,}
    | (?-u:\b)npm_[A-Za-z0-9]{36}
    | (?-u:\b)SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}
    | (?-u:\b)SK[0-9a-fA-F]{32}(?-u:\b)
    | (?-u:\b)shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}
    | (?-u:\b)dop_v1_[a-f0-9]{64}
    | (?-u:\b)sq0(?:atp|csp)-[A-Za-z0-9_\-]{22,}
    | (?-u:\b)pypi-[A-Za-z0-9_\-]{50,}
    | -----BEGIN[A-Z\ ]*PRIVATE\ KEY(?:\ BLOCK)?-----
    | (?-u:\b)eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{5,}
    | (?-u:\b)Bearer\s+[A-Za-z0-9\-._~+/]{20,}=*
    | (?-u:\b)AccountKey=[A-Za-z0-9+/=]{20,}
";

/// What follows a credential keyword (found by the word automaton): an optional "for
/// <service>", a separator and a value. Whether the value really is a credential is decided
/// in code ([`assigned_secret`]).
const ASSIGNMENT_TAIL: &str = r#"(?x)
    ^(?:[\t\x20]+(?i:for|to|on|of|at|in|f[üu]r|zum|zur|vom|von|pour|du|des|para|per|de|del|della|dello|dei|di|da|do|от|для)(?:[\t\x20]+[\p{L}0-9_.@\-]+){1,3}?)?
    ["']?
    (?P<sep>[\t\x20]+(?i:is|was|are|ist|est|es|è|é|lautet)[\t\x20]*:?[\t\x20]+
        |[\t\x20]*(?::=|=>|->|=|:)[\t\x20]*
        |['’]s[\t\x20]+
        |[\t\x20]+[—–][\t\x20]+)
    (?P<q>["'`])?
    (?P<val>[^\s"'`]+)
"#;

/// What follows a cue that names a national identifier: the value, cut to its digit-bearing
/// groups in code ([`id_value`]).
const ID_TAIL: &str = r"(?x)
    ^(?:[\t\x20]*(?:(?i:number|num|no|nr|is|was|ist|est|es|card)|n[º°o]|[:=\#\-\.]))*
    [\t\x20]*
    (?P<v>[A-Za-z0-9][A-Za-z0-9\x20.\-/]{3,40})
";

/// A street address that starts at a house number (the caller anchors it there): English
/// "221B Baker Street" (capitalised names, then a street word) or French "10 rue de Rivoli".
const STREET_AFTER_NUMBER: &str = r"(?x)
    ^\d{1,5}[A-Za-z]?(?:[\-/]\d{1,5}[A-Za-z]?)?,?[\t\x20]+
    (?:
        (?:(?:\p{Lu}[\p{L}'’\-]*\.?|\d{1,3}(?:st|nd|rd|th))[\t\x20]+){1,4}
        (?:Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?
          |Terrace|Crescent|Parkway|Pkwy\.?|Highway|Hwy\.?|Court|Ct\.?|Way|Place|Pl\.?|Close
          |Square|Sq\.?|Circle|Cir\.?|Row|Mews|Gardens|Grove|Walk|Trail|Plaza|Alley|Strasse
          |Straße|street|avenue|road|boulevard|lane|drive|terrace|crescent|parkway|highway)
        (?-u:\b)
      | (?:(?:bis|ter)[\t\x20]+)?
        (?:rue|avenue|av\.|boulevard|bd|chemin|allée|impasse|quai|place|route|cours)[\t\x20]+
        (?:(?:de|des|du|la|le|les)[\t\x20]+){0,2}(?:l['’]|d['’])?\p{Lu}[\p{L}'’\-]*
    )
";

/// How many compiled detectors a fully built [`PrivacyDetector`] has: five regular
/// expressions (keys and tokens, credential assignments, identifier cues, street names, dates
/// after birth words) and the word dictionary. The scans for numbers, email, IPv6 and MAC
/// addresses are hand-written and need no compiling.
const DETECTORS: usize = 6;

/// A policy's own pattern, compiled.
#[derive(Debug, Clone)]
struct CustomRule {
    regex: Regex,
    kind: PiiKind,
    category: String,
    weight: f32,
}

/// Finds private data in requests. Build once and share: construction compiles the
/// expressions.
///
/// Use [`PrivacyDetector::detector_count`] to check that every built-in detector compiled.
#[derive(Debug, Clone)]
pub struct PrivacyDetector {
    tokens: Option<Regex>,
    assignment: Option<Regex>,
    id_tail: Option<Regex>,
    street: Option<Regex>,
    birth_tail: Option<Regex>,
    /// Topics, credential keywords, identifier and birth cues, found in one pass.
    words: Option<AhoCorasick>,
    /// What each pattern of `words` is.
    roles: Vec<Roles>,
    /// The topic terms `roles` point into: the built-in ones, then the policy's.
    terms: Vec<Term>,
    /// The policy's own patterns, and a set that finds which of them match in one pass.
    custom: Vec<CustomRule>,
    custom_set: Option<RegexSet>,
}

/// What a dictionary pattern is: a topic term, a credential keyword, an identifier or birth
/// cue (one text can be several: "passport number").
#[derive(Debug, Clone, Copy, Default)]
struct Roles {
    term: Option<usize>,
    keyword: bool,
    id_cue: bool,
    birth_cue: bool,
}

/// A dictionary hit.
#[derive(Debug, Clone, Copy)]
struct Hit {
    roles: Roles,
    start: usize,
    end: usize,
}

fn regex(name: &str, pattern: &str) -> Option<Regex> {
    let r = Regex::new(pattern).ok();
    if r.is_none() {
        // Only reachable if the regex crate is built without a feature the patterns need;
        // say so loudly instead of silently detecting less.
        tracing::error!(
            detector = name,
            "privacy detector failed to compile; it is disabled"
        );
    }
    r
}

impl Default for PrivacyDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl PrivacyDetector {
    /// The detector with every built-in kind and no policy additions.
    pub fn new() -> Self {
        Self::build(&[], Vec::new(), None)
    }

    /// The detector with every built-in kind plus the policy's extra topic words and custom
    /// patterns (`[privacy.topics]`, `[[privacy.patterns]]`). Fails, naming the key, when a
    /// pattern does not compile or its category is not a name.
    pub fn with_policy(policy: &PrivacyPolicy) -> Result<Self, PolicyError> {
        let mut custom = Vec::with_capacity(policy.patterns.len());
        for (i, p) in policy.patterns.iter().enumerate() {
            let key = |field: &str| format!("privacy.patterns[{i}].{field}");
            let regex = compile_custom(&p.regex).map_err(|message| PolicyError::Inconsistent {
                key: key("regex"),
                message,
            })?;
            crate::policy::check_category(&p.category).map_err(|message| {
                PolicyError::Inconsistent {
                    key: key("category"),
                    message,
                }
            })?;
            let kind = PiiKind::from_name(&p.category)
                .unwrap_or(PiiKind::Custom(u16::try_from(i).unwrap_or(u16::MAX)));
            custom.push(CustomRule {
                regex,
                kind,
                category: p.category.clone(),
                weight: p.weight.get(),
            });
        }
        let set = if custom.is_empty() {
            None
        } else {
            let set = RegexSetBuilder::new(custom.iter().map(|c| c.regex.as_str()))
                .size_limit(CUSTOM_SIZE_LIMIT.saturating_mul(custom.len()))
                .build()
                .map_err(|e| PolicyError::Inconsistent {
                    key: "privacy.patterns".into(),
                    message: format!("the patterns together do not compile: {e}"),
                })?;
            Some(set)
        };
        let extra: Vec<(Topic, String)> = policy
            .topics
            .iter()
            .flat_map(|(topic, words)| words.iter().map(move |w| (topic, w.trim().to_string())))
            .filter(|(_, w)| !w.is_empty())
            .collect();
        Ok(Self::build(&extra, custom, set))
    }

    fn build(
        extra: &[(Topic, String)],
        custom: Vec<CustomRule>,
        custom_set: Option<RegexSet>,
    ) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut roles: Vec<Roles> = Vec::new();
        let mut add = |text: &str, role: &dyn Fn(&mut Roles)| {
            // Non-ASCII words are matched in their written case, their capitalised form and
            // in capitals (the automaton folds ASCII case only).
            let mut forms = vec![text.to_string()];
            if !text.is_ascii() {
                let lower = text.to_lowercase();
                let mut chars = lower.chars();
                let capital: String = chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default();
                forms.extend([lower, capital, text.to_uppercase()]);
            }
            for form in forms {
                let i = match patterns.iter().position(|p| p.eq_ignore_ascii_case(&form)) {
                    Some(i) => i,
                    None => {
                        patterns.push(form);
                        roles.push(Roles::default());
                        roles.len() - 1
                    }
                };
                if let Some(r) = roles.get_mut(i) {
                    role(r);
                }
            }
        };
        let mut terms: Vec<Term> = TERMS.iter().chain(MORE_TERMS).copied().collect();
        for (i, term) in terms.iter().enumerate() {
            add(term.text, &|r| r.term = Some(i));
        }
        for (topic, word) in extra {
            let i = terms.len();
            terms.push(t("").on(*topic));
            add(word, &|r| r.term = Some(i));
        }
        for k in KEYWORDS {
            add(k, &|r| r.keyword = true);
        }
        for c in ID_CUES {
            add(c, &|r| r.id_cue = true);
        }
        for c in BIRTH_CUES {
            add(c, &|r| r.birth_cue = true);
        }
        let words = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .ok();
        if words.is_none() {
            tracing::error!(
                detector = "words",
                "privacy detector failed to build; it is disabled"
            );
        }
        Self {
            tokens: regex("tokens", TOKENS),
            assignment: regex("assignment", ASSIGNMENT_TAIL),
            id_tail: regex("id_tail", ID_TAIL),
            street: regex("street", STREET_AFTER_NUMBER),
            birth_tail: regex("birth_tail", BIRTH_TAIL),
            words,
            roles,
            terms,
            custom,
            custom_set,
        }
    }

    /// The category name of a finding: the kind's name (`email`), the topic's (`health`,
    /// also for impersonal mentions) or the custom pattern's.
    pub fn category<'a>(&'a self, finding: &Finding) -> &'a str {
        if let Some(topic) = finding.topic {
            return topic.as_str();
        }
        match finding.kind {
            PiiKind::Custom(i) => self
                .custom
                .get(usize::from(i))
                .map_or("custom", |c| c.category.as_str()),
            kind => kind.name(),
        }
    }

    /// How many compiled detectors are active (6 when all compiled: keys and tokens,
    /// credential assignments, identifier cues, street names, dates after birth words and the
    /// word dictionary). The scans for numbers (cards, IBANs, national ids, IPv4, phones,
    /// house numbers), email, IPv6 and MAC addresses are plain code and always on; a policy's
    /// custom patterns are counted apart.
    pub fn detector_count(&self) -> usize {
        let compiled = [
            self.tokens.is_some(),
            self.assignment.is_some(),
            self.id_tail.is_some(),
            self.street.is_some(),
            self.birth_tail.is_some(),
            self.words.is_some(),
        ];
        debug_assert_eq!(compiled.len(), DETECTORS);
        compiled.iter().filter(|c| **c).count()
    }

    /// Scans every message of a request.
    pub fn scan(&self, request: &ChatRequest) -> PrivacyReport {
        let mut findings = Vec::new();
        let mut sensitivity = request.sensitivity;
        for (i, m) in request.messages.iter().enumerate() {
            self.scan_message(i, &m.content, m.role == Role::User, &mut findings);
            sensitivity = sensitivity.max(m.sensitivity);
        }
        let label = |score: f32| match sensitivity {
            Sensitivity::Confidential => 1.0,
            Sensitivity::Internal => score.max(0.5),
            Sensitivity::Public | Sensitivity::Unlabelled => score,
        };
        let (mut keep, mut keep_residual) = (1.0f32, 1.0f32);
        let mut mentions: Vec<&str> = Vec::new();
        for f in &findings {
            if f.kind == PiiKind::TopicMention {
                let text = request
                    .messages
                    .get(f.message)
                    .and_then(|m| m.content.get(f.start..f.end))
                    .unwrap_or("");
                let stem = text.trim_end_matches(['s', 'S']);
                if !mentions.iter().any(|m| m.eq_ignore_ascii_case(stem)) {
                    mentions.push(stem);
                }
                continue;
            }
            let w = f.weight.clamp(0.0, 1.0);
            keep *= 1.0 - w;
            if !f.kind.redactable() {
                keep_residual *= 1.0 - w;
            }
        }
        let distinct = i32::try_from(mentions.len()).unwrap_or(i32::MAX);
        let mention =
            (1.0 - (1.0 - PiiKind::TopicMention.weight()).powi(distinct)).min(MENTION_CAP);
        keep *= 1.0 - mention;
        keep_residual *= 1.0 - mention;
        let mut categories: Vec<CategoryCount> = Vec::new();
        for f in findings.iter().filter(|f| f.kind != PiiKind::TopicMention) {
            let name = self.category(f);
            match categories.iter_mut().find(|c| c.category == name) {
                Some(c) => c.count += 1,
                None => categories.push(CategoryCount {
                    category: name.to_string(),
                    count: 1,
                }),
            }
        }
        categories.sort_by(|a, b| a.category.cmp(&b.category));
        PrivacyReport {
            score: label(1.0 - keep).clamp(0.0, 1.0),
            residual: label(1.0 - keep_residual).clamp(0.0, 1.0),
            findings,
            categories,
        }
    }

    /// Scans one text as if the user wrote it, appending findings for message index
    /// `message`.
    pub fn scan_text(&self, message: usize, text: &str, out: &mut Vec<Finding>) {
        self.scan_message(message, text, true, out);
    }

    /// Scans one message. Topics count as personal only in the user's own words.
    fn scan_message(&self, message: usize, text: &str, from_user: bool, out: &mut Vec<Finding>) {
        let first = out.len();
        let mut sink = Sink {
            out,
            message,
            claimed: Vec::new(),
        };
        let hits = self.words(text);
        self.custom(text, &mut sink);
        self.secrets(text, &hits, &mut sink);
        self.births(text, &hits, &mut sink);
        self.id_cues(text, &hits, &mut sink);
        emails(text, &mut sink);
        hex_addresses(text, &mut sink);
        dotted_macs(text, &mut sink);
        self.numbers(text, &mut sink);
        self.topics(text, &hits, from_user, &mut sink);
        if let Some(mine) = out.get_mut(first..) {
            mine.sort_by_key(|f| f.start);
        }
    }

    /// Every dictionary word in `text`, with word boundaries checked.
    fn words(&self, text: &str) -> Vec<Hit> {
        let Some(ac) = &self.words else {
            return Vec::new();
        };
        let bytes = text.as_bytes();
        let mut hits = Vec::new();
        for m in ac.find_iter(text) {
            let Some(&roles) = self.roles.get(m.pattern().as_usize()) else {
                continue;
            };
            let (start, mut end) = (m.start(), m.end());
            // A Russian stem takes its case ending ("долгами", "депрессию").
            if roles
                .term
                .and_then(|i| self.terms.get(i))
                .is_some_and(|t| t.has(STEM))
            {
                end = stem_end(text, end);
            }
            let boundary_before = word_start(bytes, start)
                || (roles.keyword && bytes.get(start.wrapping_sub(1)) == Some(&b'_'));
            if boundary_before && word_end(bytes, end) && !letters_around(text, start, end) {
                hits.push(Hit { roles, start, end });
            }
        }
        hits
    }

    /// The policy's patterns: one pass of the set says which match, then only those run.
    fn custom(&self, text: &str, sink: &mut Sink<'_>) {
        let Some(set) = &self.custom_set else {
            return;
        };
        for i in set.matches(text).iter() {
            let Some(rule) = self.custom.get(i) else {
                continue;
            };
            for m in rule.regex.find_iter(text) {
                sink.claim_weighted(rule.kind, m.start(), m.end(), rule.weight);
            }
        }
    }

    /// A date after a birth word: "DOB 03/04/1985", "né le 12 mars 1985".
    fn births(&self, text: &str, hits: &[Hit], sink: &mut Sink<'_>) {
        let Some(re) = &self.birth_tail else {
            return;
        };
        for hit in hits.iter().filter(|h| h.roles.birth_cue) {
            let Some(tail) = text.get(hit.end..) else {
                continue;
            };
            if let Some(d) = re.captures(tail).and_then(|c| c.name("d"))
                && birth_date_ok(d.as_str())
            {
                sink.claim(PiiKind::DateOfBirth, hit.end + d.start(), hit.end + d.end());
                continue;
            }
            // Verb-final order: "ich bin am 12. Juni 1985 geboren", "я 7 марта 1991 года
            // родилась".
            let verb = text
                .get(hit.start..hit.end)
                .is_some_and(|w| is_any(w, BIRTH_VERBS));
            if let Some((s, e)) = verb.then(|| date_before(text, hit.start)).flatten() {
                sink.claim(PiiKind::DateOfBirth, s, e);
            }
        }
    }

    fn secrets(&self, text: &str, hits: &[Hit], sink: &mut Sink<'_>) {
        if let Some(re) = &self.tokens {
            for m in re.find_iter(text) {
                if token_ok(m.as_str()) {
                    sink.claim(PiiKind::Secret, m.start(), m.end());
                }
            }
        }
        if text.contains("://") {
            for (i, _) in text.match_indices("://") {
                if let Some((s, e)) = url_password(text, i + 3) {
                    sink.claim(PiiKind::Secret, s, e);
                }
            }
        }
        for (s, e) in cli_passwords(text) {
            sink.claim(PiiKind::Secret, s, e);
        }
        let Some(re) = &self.assignment else {
            return;
        };
        let bytes = text.as_bytes();
        for hit in hits.iter().filter(|h| h.roles.keyword) {
            // The keyword ends at a word boundary, not inside `password_hash`.
            if bytes
                .get(hit.end)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                continue;
            }
            let Some(tail) = text.get(hit.end..) else {
                continue;
            };
            let given = re.captures(tail).and_then(|caps| {
                let (sep, val) = (caps.name("sep")?, caps.name("val")?);
                let quoted = caps.name("q").is_some();
                let value = (hit.end + val.start(), hit.end + val.end());
                assigned_secret(text, (hit.start, hit.end), sep.as_str(), quoted, value)
            });
            // No separator at all: "Мой пароль Qwerty2024!", "my password hunter2",
            // "пароль от почты Lisa_1990".
            let given = given.or_else(|| {
                let (s, e) = bare_value(tail)?;
                let value = (hit.end + s, hit.end + e);
                assigned_secret(text, (hit.start, hit.end), " ", false, value)
            });
            if let Some((s, e)) = given {
                sink.claim(PiiKind::Secret, s, e);
            }
        }
    }

    fn id_cues(&self, text: &str, hits: &[Hit], sink: &mut Sink<'_>) {
        let Some(re) = &self.id_tail else {
            return;
        };
        for hit in hits.iter().filter(|h| h.roles.id_cue) {
            let Some(tail) = text.get(hit.end..) else {
                continue;
            };
            if let Some(v) = re.captures(tail).and_then(|c| c.name("v"))
                && let Some(len) = id_value(v.as_str())
            {
                let start = hit.end + v.start();
                sink.claim(PiiKind::NationalId, start, start + len);
            }
        }
    }

    /// One pass over the runs of digits: each *region* is a run of digit groups joined by
    /// single separators (space, dash, dot, slash, parentheses), classified in order of
    /// precedence: IBAN and letter-led ids at its start, cards, national ids, IPs, phones;
    /// house numbers are collected and claimed last.
    fn numbers(&self, text: &str, sink: &mut Sink<'_>) {
        let bytes = text.as_bytes();
        let mut runs: Vec<Run> = Vec::new();
        let mut used: Vec<bool> = Vec::new();
        let mut streets: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while let Some(k) = next_digit(bytes, i) {
            i = k;
            runs.clear();
            let mut j = i;
            loop {
                let s = j;
                while bytes.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                runs.push(Run { start: s, end: j });
                let sep = separator_len(bytes, j);
                if sep == 0 {
                    break;
                }
                j += sep;
            }
            used.clear();
            // Digits inside an earlier finding (an IPv6 or MAC address, a key) are not free
            // for cards and phones around them.
            used.extend(runs.iter().map(|r| sink.taken(r.start, r.end)));
            let region = Region { text, runs: &runs };
            region.classify(&mut used, sink);
            self.street_numbers(&region, &used, &mut streets);
            i = j;
        }
        for (s, e) in streets {
            sink.claim(PiiKind::Address, s, e);
        }
    }

    fn street_numbers(
        &self,
        region: &Region<'_>,
        used: &[bool],
        streets: &mut Vec<(usize, usize)>,
    ) {
        let text = region.text;
        let bytes = text.as_bytes();
        for (k, run) in region.runs.iter().enumerate() {
            if used.get(k).copied().unwrap_or(true) || run.len() > 5 {
                continue;
            }
            let before = run.start.checked_sub(1).and_then(|p| bytes.get(p)).copied();
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b',') {
                continue;
            }
            if let Some(span) = self.street_after(text, run.start) {
                streets.push(span);
            } else if run.len() <= 4
                && let Some(span) = street_before(text, *run)
            {
                streets.push(span);
            }
        }
    }

    /// "221B Baker Street", "10 rue de Rivoli": an address that starts at this house number.
    fn street_after(&self, text: &str, start: usize) -> Option<(usize, usize)> {
        let re = self.street.as_ref()?;
        let bytes = text.as_bytes();
        // Cheap gate: a name or street word must follow the number within a few bytes.
        let gate = bytes
            .get(start..)?
            .iter()
            .take(12)
            .skip_while(|b| b.is_ascii_digit());
        let mut seen_space = false;
        let mut ok = false;
        for &b in gate {
            if b == b' ' || b == b'\t' {
                seen_space = true;
            } else if seen_space {
                ok = b.is_ascii_uppercase()
                    || !b.is_ascii()
                    || b.is_ascii_digit()
                    || b"rabcqip".contains(&b);
                break;
            }
        }
        if !ok {
            return None;
        }
        let mut end = (start + 160).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let m = re.find(text.get(start..end)?)?;
        let span = (start, start + m.end());
        let matched = m.as_str().trim_end_matches('.');
        let last = matched.rsplit(char::is_whitespace).next().unwrap_or("");
        if AMBIGUOUS_STREET.contains(&last) && !address_context(text, span) {
            return None;
        }
        Some(span)
    }

    fn topics(&self, text: &str, hits: &[Hit], from_user: bool, sink: &mut Sink<'_>) {
        let bytes = text.as_bytes();
        for hit in hits {
            let Some(term) = hit.roles.term.and_then(|i| self.terms.get(i)) else {
                continue;
            };
            let start = hit.start;
            // Plurals belong to the finding ("loans").
            let end = if bytes.get(hit.end).is_some_and(|b| *b == b's' || *b == b'S')
                && bytes
                    .get(hit.end.saturating_sub(1))
                    .is_some_and(u8::is_ascii_alphanumeric)
            {
                hit.end + 1
            } else {
                hit.end
            };
            let Some(matched) = text.get(start..end) else {
                continue;
            };
            if term.has(UPPER) && matched.bytes().any(|b| b.is_ascii_lowercase()) {
                continue;
            }
            if term.has(CODE) && glued_to_code(bytes, end) {
                continue;
            }
            let prev = WordsBack::new(text, start).next().map(|(_, w)| w);
            if prev.is_some_and(|w| is_any(w, term.not_after)) {
                continue;
            }
            let next = WordsFwd::new(text, end).next().map(|(_, w)| w);
            if next.is_some_and(|w| is_any(w, term.not_before)) {
                continue;
            }
            if term.has(AMOUNT) && !amount_follows(text, end) {
                continue;
            }
            let personal = from_user && personal(text, start, end, term, next);
            let kind = if personal {
                PiiKind::SensitiveTopic
            } else if term.has(QUIET | AGENT | AMOUNT) {
                continue;
            } else {
                PiiKind::TopicMention
            };
            sink.push_topic(kind, term.topic, start, end);
        }
    }
}

/// Where findings of one message go; earlier detectors claim their spans first (a card
/// number is not also a phone number).
struct Sink<'a> {
    out: &'a mut Vec<Finding>,
    message: usize,
    /// The claimed spans of this message, sorted and disjoint, so a claim costs a binary
    /// search however many findings a long text has.
    claimed: Vec<(usize, usize)>,
}

impl Sink<'_> {
    fn taken(&self, start: usize, end: usize) -> bool {
        // The last claimed span that starts before `end` is the only one that can overlap:
        // the spans are disjoint, so their ends are sorted too.
        let i = self.claimed.partition_point(|(s, _)| *s < end);
        i > 0 && self.claimed.get(i - 1).is_some_and(|(_, e)| *e > start)
    }

    /// Adds a finding unless an earlier one overlaps it; says whether it was added.
    fn claim(&mut self, kind: PiiKind, start: usize, end: usize) -> bool {
        if start >= end || self.taken(start, end) {
            return false;
        }
        self.push(kind, start, end);
        true
    }

    /// Like [`claim`](Self::claim), with a weight of its own (a custom pattern's).
    fn claim_weighted(&mut self, kind: PiiKind, start: usize, end: usize, weight: f32) -> bool {
        if start >= end || self.taken(start, end) {
            return false;
        }
        let at = self.claimed.partition_point(|(s, _)| *s < start);
        self.claimed.insert(at, (start, end));
        self.out.push(Finding {
            kind,
            topic: None,
            weight,
            message: self.message,
            start,
            end,
        });
        true
    }

    fn push(&mut self, kind: PiiKind, start: usize, end: usize) {
        self.claim_weighted(kind, start, end, kind.weight());
    }

    fn push_topic(&mut self, kind: PiiKind, topic: Topic, start: usize, end: usize) {
        self.out.push(Finding {
            kind,
            topic: Some(topic),
            weight: kind.weight(),
            message: self.message,
            start,
            end,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// The value after a credential keyword with no separator: the next word, or the word after
/// a "for <service>" of up to three words ("пароль от почты Lisa_1990"). Offsets in `tail`.
fn bare_value(tail: &str) -> Option<(usize, usize)> {
    const FOR: &[&str] = &[
        "for", "to", "of", "für", "zum", "zur", "vom", "von", "pour", "du", "des", "para", "del",
        "per", "della", "dello", "di", "от", "для",
    ];
    let words: Vec<(usize, &str)> = tail
        .split(' ')
        .scan(0usize, |at, w| {
            let start = *at;
            *at += w.len() + 1;
            Some((start, w))
        })
        .skip(1)
        .take(5)
        .collect();
    let (first_at, first) = *words.first()?;
    if first.is_empty() || first.contains(['\n', '\t']) {
        return None;
    }
    if !is_any(first, FOR) {
        return Some((first_at, first_at + first.len()));
    }
    // After "for": the first word with a digit, within three words.
    words
        .iter()
        .skip(1)
        .take(3)
        .find(|(_, w)| w.bytes().any(|b| b.is_ascii_digit()))
        .filter(|(_, w)| !w.is_empty() && !w.contains(['\n', '\t']))
        .map(|(at, w)| (*at, *at + w.len()))
}

/// Rejects documentation placeholders and word-like strings that merely share a key prefix
/// ("sk-learn-tutorial-for-beginners").
fn token_ok(token: &str) -> bool {
    let lower = token.to_ascii_lowercase();
    if [
        "xxxx",
        "your",
        "<",
        "...",
        "****",
        "placeholder",
        "redacted",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        return false;
    }
    let body = token.get(3..).unwrap_or("");
    let mut chars = body.chars().filter(char::is_ascii_alphanumeric);
    if let Some(c) = chars.next()
        && chars.all(|d| d == c)
    {
        return false;
    }
    if token.starts_with("sk-") || token.starts_with("pk-") || token.starts_with("rk-") {
        // Real keys have long runs of random characters between their dashes.
        return body
            .split(['-', '_'])
            .any(|part| part.len() >= 12 && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    true
}

/// Passwords given on a command line: the MySQL family's glued `-pS3cret` and `sshpass -p
/// S3cret`, on a line that runs that command. Spans of the values.
fn cli_passwords(text: &str) -> Vec<(usize, usize)> {
    const GLUED: &[&str] = &[
        "mysql",
        "mysqldump",
        "mysqladmin",
        "mariadb",
        "mariadb-dump",
    ];
    let mut out = Vec::new();
    if !text.contains(" -p") {
        return out;
    }
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let words: Vec<&str> = line.split_whitespace().collect();
        let glued = words.iter().any(|w| {
            let name = w.rsplit('/').next().unwrap_or(w);
            GLUED.iter().any(|c| name.eq_ignore_ascii_case(c))
        });
        let sshpass = words.iter().any(|w| w.eq_ignore_ascii_case("sshpass"));
        for (i, _) in line.match_indices(" -p") {
            let at = i + 3;
            let rest = line.get(at..).unwrap_or("");
            let (value_at, value) = if glued && rest.starts_with(|c: char| !c.is_whitespace()) {
                (at, rest)
            } else if sshpass && rest.starts_with(' ') {
                let trimmed = rest.trim_start();
                (at + rest.len() - trimmed.len(), trimmed)
            } else {
                continue;
            };
            let value = value.split_whitespace().next().unwrap_or("");
            let bare = value.trim_matches(['\'', '"']);
            let lead = value.len() - value.trim_start_matches(['\'', '"']).len();
            if bare.len() < 4 || bare.starts_with(['$', '-', '<', '%', '{']) || placeholder(bare) {
                continue;
            }
            let start = line_start + value_at + lead;
            out.push((start, start + bare.len()));
        }
        line_start += line.len();
    }
    out
}

/// The password in `scheme://user:password@host`, if it is not a placeholder.
fn url_password(text: &str, after_scheme: usize) -> Option<(usize, usize)> {
    let rest = text.get(after_scheme..)?;
    let authority_len = rest
        .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'' || c == '`')
        .unwrap_or(rest.len());
    let authority = rest.get(..authority_len)?;
    let at = authority.rfind('@')?;
    let userinfo = authority.get(..at)?;
    let colon = userinfo.find(':')?;
    let password = userinfo.get(colon + 1..)?;
    let user = userinfo.get(..colon)?;
    // `redis://:password@host` has no user.
    if password.is_empty() || placeholder(password) || (user.is_empty() && password.len() < 6) {
        return None;
    }
    let lower = password.to_ascii_lowercase();
    if [
        "pass", "password", "passwd", "pwd", "secret", "pw", "user", "changeme",
    ]
    .contains(&lower.as_str())
        || password.starts_with(['$', '{', '%', '<', '['])
    {
        return None;
    }
    let start = after_scheme + colon + 1;
    Some((start, start + password.len()))
}

/// Whether the value after a credential keyword is a credential, and its span. Code that
/// *handles* credentials (`password = request.form["password"]`, `api_key =
/// os.getenv("KEY")`) and prose about them ("the password is stored hashed", "the secret is
/// to use cold butter") are not secrets; given values ("my password for gmail is hunter2",
/// `SECRET_KEY = 'django-insecure-9x...'`) are.
fn assigned_secret(
    text: &str,
    (kw_start, kw_end): (usize, usize),
    sep: &str,
    quoted: bool,
    (val_start, val_end): (usize, usize),
) -> Option<(usize, usize)> {
    let raw = text.get(val_start..val_end)?;
    if raw.len() > 200 {
        return None;
    }
    if raw.contains(['(', '[', '{', '<', '>', '}', ']'])
        || raw.starts_with(['$', '%', '@', '#', '=', '-', '/', '\\'])
        || raw.contains("://")
        || raw.contains("${")
    {
        return None;
    }
    let v = raw.trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '*', '…']);
    if v.is_empty() || placeholder(v) {
        return None;
    }
    let word_sep = sep.trim().chars().next().is_some_and(char::is_alphabetic) || sep.contains('s');
    // "Мой пароль Qwerty2024!", "my password hunter2": no separator at all.
    let bare = sep.trim().is_empty();
    let keyword = text.get(kw_start..kw_end)?;
    let is_pin = keyword.len() >= 3
        && keyword
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case("pin"));
    let is_token = keyword.eq_ignore_ascii_case("token");
    let identifier_key = kw_start > 0 && text.as_bytes().get(kw_start - 1) == Some(&b'_');
    // "my password", or "the password to my email".
    let possessive = possessive_before(text, kw_start)
        || text
            .get(kw_end..val_start)
            .is_some_and(|gap| gap.split_whitespace().any(|w| is_any(w, POSSESSIVES)));
    let qualified = qualified_before(text, kw_start);

    let letters = v.chars().all(char::is_alphabetic);
    let digits = v.chars().filter(char::is_ascii_digit).count();
    let symbols = v
        .chars()
        .any(|c| !c.is_alphanumeric() && !matches!(c, '_' | '-' | '.'));
    let mixed_case = v.chars().skip(1).any(char::is_uppercase) && v.chars().any(char::is_lowercase);

    if is_any(v, STOP_VALUES) || is_any(v, TYPE_NAMES) {
        return None;
    }
    if !quoted {
        // Identifiers, not values: env names, dotted paths, snake_case variables.
        let env_name = v
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && (v.contains('_') || letters);
        let dotted = v.contains('.')
            && v.split('.').all(|p| {
                p.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        let snake = v.contains('_') && digits == 0 && !v.chars().any(char::is_uppercase);
        if env_name || dotted || snake {
            return None;
        }
        if letters && !possessive {
            let lower = v.to_lowercase();
            if lower.ends_with("ed") || lower.ends_with("ly") || lower.ends_with("ing") {
                return None;
            }
        }
    }
    if is_pin {
        let pin_like = (4..=8).contains(&v.len()) && digits == v.len();
        let cued = possessive
            || qualified
            || keyword.len() > 3
            || keyword.get(..3).is_some_and(|p| p == "PIN");
        return (pin_like && cued).then_some((val_start, val_start + v.len()));
    }
    let strong = digits > 0 || symbols || (mixed_case && (quoted || word_sep));
    if bare {
        // Only something password-like: "my password reset link" is prose. Without a
        // possessive it must look generated: both cases and a digit, eight characters.
        let letters_and_digits = digits > 0 && v.chars().any(char::is_alphabetic);
        let generated = digits > 0
            && v.chars().any(char::is_uppercase)
            && v.chars().any(char::is_lowercase)
            && v.chars().count() >= 8;
        let accepted = !is_pin
            && ((possessive && (letters_and_digits || symbols) && v.len() >= 6) || generated);
        return accepted.then_some((val_start, val_start + v.len()));
    }
    let accepted = if is_token {
        v.len() >= 16 && strong
    } else if strong {
        v.len() >= 4 || (possessive && v.len() >= 3)
    } else {
        let long_enough = v.len() >= 4 || (possessive && v.len() >= 3);
        long_enough
            && (possessive
                || quoted
                || (qualified && word_sep)
                || (identifier_key && !word_sep && v.len() >= 6))
    };
    accepted.then_some((val_start, val_start + v.len()))
}

fn placeholder(v: &str) -> bool {
    let lower = v.to_lowercase();
    if [
        "xxx",
        "***",
        "...",
        "your",
        "changeme",
        "change_me",
        "placeholder",
        "redacted",
        "todo",
        "replace",
        "insert",
        "dummy",
        "<",
        "•••",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        return true;
    }
    let mut chars = v.chars();
    chars
        .next()
        .is_some_and(|c| v.chars().count() > 2 && chars.all(|d| d == c))
}

fn possessive_before(text: &str, pos: usize) -> bool {
    WordsBack::new(text, pos)
        .take(3)
        .any(|(_, w)| is_any(w, POSSESSIVES))
}

/// "the wifi password", "admin password": a specific credential, not credentials in general.
fn qualified_before(text: &str, pos: usize) -> bool {
    // Only when the keyword follows its qualifier directly (no punctuation between).
    let before = text.get(..pos).unwrap_or("");
    if !before.ends_with(' ') {
        return false;
    }
    WordsBack::new(text, pos)
        .next()
        .is_some_and(|(_, w)| w.chars().all(char::is_alphanumeric) && !is_any(w, NOT_QUALIFIERS))
}

// ---------------------------------------------------------------------------------------------
// National identifiers after a cue

/// The length of the identifier at the start of `v` (the text after a cue), if it has one:
/// its groups while they carry digits, plus a leading or trailing group of letters (`QQ 12 34
/// 56 C`); at least five digits; not a date.
fn id_value(v: &str) -> Option<usize> {
    let mut end = 0;
    let mut digits = 0;
    let mut groups = 0;
    let mut pos = 0;
    let mut last_sep = None;
    let mut date_seps = 0;
    for (i, part) in split_keep(v) {
        let has_digit = part.bytes().any(|b| b.is_ascii_digit());
        let short_letters = part.len() <= 3 && part.bytes().all(|b| b.is_ascii_alphabetic());
        if has_digit || (short_letters && (groups == 0 || digits > 0)) {
            if !has_digit && groups > 0 {
                // A trailing letter group ends the value ("... 56 C").
                if part.len() <= 2 && part.bytes().all(|b| b.is_ascii_uppercase()) {
                    end = i + part.len();
                }
                break;
            }
            digits += part.bytes().filter(u8::is_ascii_digit).count();
            groups += 1;
            end = i + part.len();
            if let Some(sep) = last_sep
                && (sep == '/' || sep == '.')
            {
                date_seps += 1;
            }
        } else {
            break;
        }
        pos = i + part.len();
        last_sep = v.get(pos..).and_then(|r| r.chars().next());
    }
    let _ = pos;
    let value = v.get(..end)?;
    if digits < 5 || value.len() < 6 {
        return None;
    }
    // "12/03/2030", "01.02.1990": a date after "passport expires" is not the number.
    if date_seps >= 2 && groups == 3 {
        return None;
    }
    Some(end)
}

/// The groups of `v` split on single spaces, dots, dashes and slashes, with their offsets.
fn split_keep(v: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    v.split([' ', '.', '-', '/']).map(move |part| {
        let at = offset;
        offset += part.len() + 1;
        (at, part)
    })
}

// ---------------------------------------------------------------------------------------------
// Email addresses

fn emails(text: &str, sink: &mut Sink<'_>) {
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('@') {
        let local_ok = |b: &u8| b.is_ascii_alphanumeric() || b"._%+-".contains(b);
        let mut s = at;
        while s > 0 && bytes.get(s - 1).is_some_and(local_ok) {
            s -= 1;
        }
        while bytes.get(s) == Some(&b'.') {
            s += 1;
        }
        if s >= at {
            continue;
        }
        // Domain: labels of letters, digits and dashes joined by dots; the last is a TLD.
        let mut e = at + 1;
        let mut last_label = (e, e);
        let mut labels = 0;
        loop {
            let ls = e;
            while bytes
                .get(e)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                e += 1;
            }
            if e == ls {
                break;
            }
            labels += 1;
            last_label = (ls, e);
            if bytes.get(e) == Some(&b'.')
                && bytes.get(e + 1).is_some_and(u8::is_ascii_alphanumeric)
            {
                e += 1;
            } else {
                break;
            }
        }
        let tld = bytes.get(last_label.0..last_label.1).unwrap_or(&[]);
        if labels < 2 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
            continue;
        }
        let end = last_label.1;
        let local = text.get(s..at).unwrap_or("");
        let domain = text.get(at + 1..end).unwrap_or("");
        // Service addresses in code and docs identify nobody.
        if local.eq_ignore_ascii_case("git")
            && ["github.com", "gitlab.com", "bitbucket.org"]
                .iter()
                .any(|d| domain.eq_ignore_ascii_case(d))
        {
            continue;
        }
        sink.claim(PiiKind::Email, s, end);
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers: cards, IBANs, national ids, IPs, phones

/// Words that say a number is a place someone lives or sends things to, or a city after a
/// comma: needed before "9 Supreme Court" or "3 Green Way" counts as an address.
fn address_context(text: &str, (start, end): (usize, usize)) -> bool {
    if WordsBack::new(text, start)
        .take(4)
        .any(|(_, w)| is_any(w, ADDRESS_CUES))
    {
        return true;
    }
    let rest = text.get(end..).unwrap_or("");
    let rest = rest.strip_prefix(',').unwrap_or("").trim_start_matches(' ');
    rest.chars().next().is_some_and(char::is_uppercase)
}

/// A Russian street before a house number, "ул. Ленина, д. 5", "улица Тверская 7": where
/// it starts.
fn russian_street(text: &str, number: usize) -> Option<usize> {
    static RU_STREET: std::sync::LazyLock<Option<Regex>> = std::sync::LazyLock::new(|| {
        Regex::new(
            r"(?:^|[^\p{L}])((?i:ул\.|улица|улице|пр-т|проспект|пер\.|переулок|шоссе|бульвар|б-р|наб\.|набережная|пл\.|площадь)[\t\x20]*\p{Lu}[\p{L}\-]*(?:[\t\x20]+\p{Lu}[\p{L}\-]*)?,?[\t\x20]*(?:(?i:д\.|дом)[\t\x20]*)?)$",
        )
        .ok()
    });
    let mut from = number.saturating_sub(80);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let window = text.get(from..number)?;
    // Cyrillic letters start with 0xD0 or 0xD1 in UTF-8.
    if !window.bytes().any(|b| b == 0xD0 || b == 0xD1) {
        return None;
    }
    let caps = RU_STREET.as_ref()?.captures(window)?;
    caps.get(1).map(|m| from + m.start())
}

/// "Hauptstraße 5", "Calle Mayor 5", "Via Roma 12", "Rue de Rivoli 10", "PO Box 1234": the
/// street comes before the number.
fn street_before(text: &str, run: Run) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut end = run.end;
    if bytes.get(end).is_some_and(u8::is_ascii_lowercase)
        && !bytes.get(end + 1).is_some_and(u8::is_ascii_alphanumeric)
    {
        end += 1;
    }
    if bytes.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    if let Some(start) = russian_street(text, run.start) {
        return Some((start, end));
    }
    let between = text.get(..run.start)?;
    if !between.ends_with(' ') {
        return None;
    }
    let capitalised = |w: &str| w.chars().next().is_some_and(char::is_uppercase);
    if let Some(head) = between.strip_suffix(". ") {
        // A sentence ends there, unless the period abbreviates a street ("Kaiserstr. 5").
        let w_start = head
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_alphabetic())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let w = head.get(w_start..)?;
        let lower = w.to_lowercase();
        let abbreviated = capitalised(w) && lower.ends_with("str") && lower.chars().count() > 5;
        return abbreviated.then_some((w_start, end));
    }
    let (w1_start, w1) = WordsBack::new(text, run.start).next()?;
    if !capitalised(w1) && !eq_word(w1, "box") {
        return None;
    }
    let words: Vec<(usize, &str)> = WordsBack::new(text, run.start).take(5).collect();
    if eq_word(w1, "box") {
        return words
            .get(1)
            .filter(|(_, w)| eq_word(w, "po") || eq_word(w, "pob"))
            .map(|(s, _)| (*s, end));
    }
    if capitalised(w1) {
        let lower = w1.to_lowercase();
        if let Some(suffix) = COMPOUND_STREET.iter().find(|s| lower.ends_with(**s))
            && lower.chars().count() > suffix.chars().count() + 2
        {
            return Some((w1_start, end));
        }
    }
    // Romance order: a street word, particles and capitalised names, then the number.
    let mut names = 0;
    for (s, w) in &words {
        if STREET_WORDS.contains(w) {
            return (names > 0).then_some((*s, end));
        }
        if capitalised(w) {
            names += 1;
        } else if !is_any(w, PARTICLES) {
            return None;
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Topics

/// The term speaks of the writer by itself ("kill myself", "my doctor").
const SELF: u8 = 1;
/// Only in capitals ("AIDS", not "hearing aids").
const UPPER: u8 = 2;
/// Too common to count unless personal ("symptoms of a memory leak").
const QUIET: u8 = 4;
/// Not when glued to code punctuation ("std::vector").
const CODE: u8 = 8;
/// Needs a person doing it to the writer ("he hits me", not "it just hit me").
const AGENT: u8 = 16;
/// Needs an amount after it ("owe $5,000", not "owe you one").
const AMOUNT: u8 = 32;
/// Personal exactly when a value (a word with four or more digits) follows ("DOB
/// 03/04/1985", "account number is 31926819"), whoever's it is.
const VALUE: u8 = 64;
/// A stem: up to three more letters may follow (Russian case endings).
const STEM: u8 = 128;

#[derive(Debug, Clone, Copy)]
pub(super) struct Term {
    text: &'static str,
    /// What the term is about.
    topic: Topic,
    flags: u8,
    /// The topic does not count right after these words ("technical debt").
    not_after: &'static [&'static str],
    /// ... or right before these ("assault rifle").
    not_before: &'static [&'static str],
}

pub(super) const fn t(text: &'static str) -> Term {
    Term {
        text,
        topic: Topic::Health,
        flags: 0,
        not_after: &[],
        not_before: &[],
    }
}

impl Term {
    pub(super) const fn on(self, topic: Topic) -> Term {
        Term { topic, ..self }
    }

    pub(super) const fn with(self, flags: u8) -> Term {
        Term {
            flags: self.flags | flags,
            ..self
        }
    }

    const fn not_after(self, words: &'static [&'static str]) -> Term {
        Term {
            not_after: words,
            ..self
        }
    }

    const fn not_before(self, words: &'static [&'static str]) -> Term {
        Term {
            not_before: words,
            ..self
        }
    }

    const fn has(&self, flags: u8) -> bool {
        self.flags & flags != 0
    }
}

const TERMS: &[Term] = &[
    // health
    t("diagnosed with"),
    t("diagnosis").with(QUIET),
    t("my diagnosis").with(SELF),
    t("my doctor").with(SELF),
    t("my gp").with(SELF),
    t("my therapist").with(SELF),
    t("my psychiatrist").with(SELF),
    t("my psychologist").with(SELF),
    t("my symptoms").with(SELF),
    t("my medication").with(SELF),
    t("my meds").with(SELF),
    t("therapist"),
    t("therapy").not_after(&["retail", "gene", "cell"]),
    t("psychiatrist"),
    t("psychologist"),
    t("depression").not_after(&["great", "tropical", "economic", "the"]),
    t("depressed"),
    t("anxiety"),
    t("panic attack"),
    t("hiv"),
    t("aids").with(UPPER),
    t("cancer").not_before(&["cell", "cells"]),
    t("tumor"),
    t("tumour"),
    t("leukemia"),
    t("leukaemia"),
    t("lymphoma"),
    t("chemo"),
    t("chemotherapy"),
    t("radiotherapy"),
    t("diabetes"),
    t("diabetic"),
    t("pregnant"),
    t("pregnancy"),
    t("miscarriage"),
    t("miscarried"),
    t("stillbirth"),
    t("abortion"),
    t("infertility"),
    t("infertile"),
    t("ivf"),
    t("medication").with(QUIET),
    t("prescription").with(QUIET),
    t("antidepressant"),
    t("ssri"),
    t("prozac"),
    t("zoloft"),
    t("xanax"),
    t("lexapro"),
    t("adderall"),
    t("methadone"),
    t("bipolar"),
    t("schizophrenia"),
    t("schizophrenic"),
    t("psychosis"),
    t("adhd"),
    t("autism"),
    t("autistic"),
    t("ocd"),
    t("ptsd"),
    t("rehab"),
    t("addiction"),
    t("addicted"),
    t("alcoholic"),
    t("alcoholism"),
    t("relapse").with(QUIET),
    t("relapsed"),
    t("overdose"),
    t("overdosed"),
    t("std").with(CODE).not_before(&[
        "dev",
        "deviation",
        "err",
        "error",
        "lib",
        "in",
        "out",
        "io",
        "string",
        "vector",
        "cout",
        "cin",
        "map",
        "move",
    ]),
    t("sti").with(UPPER),
    t("sexually transmitted"),
    t("herpes"),
    t("chlamydia"),
    t("gonorrhea"),
    t("gonorrhoea"),
    t("syphilis"),
    t("hpv"),
    t("hepatitis"),
    t("symptoms").with(QUIET),
    t("surgery").with(QUIET),
    t("biopsy"),
    t("blood test"),
    t("mental health"),
    t("eating disorder"),
    t("anorexia"),
    t("anorexic"),
    t("bulimia"),
    t("bulimic"),
    t("binge eating"),
    t("disability"),
    t("medical record"),
    t("epilepsy"),
    t("seizures"),
    t("dementia"),
    t("alzheimer"),
    t("alzheimer's"),
    t("parkinson's"),
    t("multiple sclerosis"),
    t("heart attack"),
    t("erectile dysfunction"),
    t("impotence"),
    t("incontinence"),
    t("viral load"),
    t("lump in my").with(SELF),
    // self-harm
    t("suicidal"),
    t("suicide"),
    t("self-harm"),
    t("self harm"),
    t("kill myself").with(SELF),
    t("killing myself").with(SELF),
    t("end my life").with(SELF),
    t("ending my life").with(SELF),
    t("take my own life").with(SELF),
    t("taking my own life").with(SELF),
    t("hurt myself").with(SELF),
    t("hurting myself").with(SELF),
    t("cut myself").with(SELF),
    t("cutting myself").with(SELF),
    t("harm myself").with(SELF),
    t("harming myself").with(SELF),
    t("starve myself").with(SELF),
    t("want to die").with(QUIET).not_before(&[
        "laughing",
        "of",
        "old",
        "happy",
        "peacefully",
        "from",
    ]),
    t("wanna die")
        .with(QUIET)
        .not_before(&["laughing", "of", "old", "happy"]),
    t("end it all").with(QUIET),
    t("better off dead").with(QUIET),
    t("no reason to live").with(QUIET),
    // abuse
    t("abuse")
        .on(Topic::Legal)
        .not_after(&[
            "api",
            "notation",
            "platform",
            "spam",
            "service",
            "system",
            "server",
            "resource",
            "privilege",
            "bot",
            "endpoint",
            "feature",
            "rate",
            "power",
        ])
        .not_before(&["of"]),
    t("abused").on(Topic::Legal),
    t("abusive").on(Topic::Legal),
    t("assault")
        .on(Topic::Legal)
        .not_before(&["rifle", "rifles", "weapon", "weapons"]),
    t("assaulted").on(Topic::Legal),
    t("sexual assault").on(Topic::Legal),
    t("rape").on(Topic::Legal),
    t("raped").on(Topic::Legal),
    t("molested").on(Topic::Legal),
    t("domestic violence").on(Topic::Legal),
    t("raped me").on(Topic::Legal).with(SELF),
    t("abused me").on(Topic::Legal).with(SELF),
    t("abuses me").on(Topic::Legal).with(SELF),
    t("molested me").on(Topic::Legal).with(SELF),
    t("hits me").on(Topic::Legal).with(AGENT),
    t("hit me").on(Topic::Legal).with(AGENT),
    t("beats me").on(Topic::Legal).with(AGENT),
    t("beat me").on(Topic::Legal).with(AGENT),
    t("beating me").on(Topic::Legal).with(AGENT),
    t("hurts me").on(Topic::Legal).with(AGENT),
    t("slapped me").on(Topic::Legal).with(AGENT),
    t("punched me").on(Topic::Legal).with(AGENT),
    t("kicked me").on(Topic::Legal).with(AGENT),
    t("choked me").on(Topic::Legal).with(AGENT),
    t("strangled me").on(Topic::Legal).with(AGENT),
    t("threatened me").on(Topic::Legal).with(AGENT),
    t("threatens me").on(Topic::Legal).with(AGENT),
    t("stalking me").on(Topic::Legal).with(AGENT),
    t("stalker").on(Topic::Legal),
    t("harassed").on(Topic::Legal),
    t("harassment").on(Topic::Legal),
    // legal and identity
    t("arrested").on(Topic::Legal),
    t("criminal record").on(Topic::Legal),
    t("dui").on(Topic::Legal),
    t("dwi").on(Topic::Legal),
    t("drunk driving").on(Topic::Legal),
    t("parole").on(Topic::Legal),
    t("probation").on(Topic::Legal),
    t("felony").on(Topic::Legal),
    t("felon").on(Topic::Legal),
    t("misdemeanor").on(Topic::Legal),
    t("misdemeanour").on(Topic::Legal),
    t("convicted").on(Topic::Legal),
    t("conviction for").on(Topic::Legal),
    t("criminal conviction").on(Topic::Legal),
    t("prior conviction").on(Topic::Legal),
    t("previous conviction").on(Topic::Legal),
    t("deported").on(Topic::Legal),
    t("deportation").on(Topic::Legal),
    t("asylum").on(Topic::Legal),
    t("green card").on(Topic::Legal),
    t("visa status").on(Topic::Legal),
    t("immigration status").on(Topic::Legal),
    t("undocumented").on(Topic::Legal),
    t("illegal immigrant").on(Topic::Legal),
    t("overstayed").on(Topic::Legal),
    t("lawsuit").on(Topic::Legal),
    t("sued").on(Topic::Legal),
    t("restraining order").on(Topic::Legal),
    t("jail").on(Topic::Legal),
    t("prison").on(Topic::Legal),
    t("court date").on(Topic::Legal),
    t("charged with").on(Topic::Legal),
    t("plea deal").on(Topic::Legal),
    t("divorce").on(Topic::Legal),
    t("custody battle").on(Topic::Legal),
    t("child custody").on(Topic::Legal),
    t("custody of").on(Topic::Legal),
    t("child support").on(Topic::Legal),
    t("alimony").on(Topic::Legal),
    t("social security").on(Topic::Legal),
    // money
    t("salary").on(Topic::Finances),
    t("my income").on(Topic::Finances).with(SELF),
    t("income").on(Topic::Finances).with(QUIET).not_before(&[
        "statement",
        "statements",
        "inequality",
        "distribution",
        "tax",
    ]),
    t("bank account").on(Topic::Finances),
    t("account number").on(Topic::Finances).with(VALUE),
    t("credit score").on(Topic::Finances),
    t("credit card debt").on(Topic::Finances),
    t("debt").on(Topic::Finances).not_after(&[
        "technical",
        "tech",
        "design",
        "code",
        "national",
        "sovereign",
        "government",
        "public",
        "federal",
        "corporate",
        "architectural",
        "architecture",
    ]),
    t("in debt").on(Topic::Finances),
    t("loan").on(Topic::Finances),
    t("payday loan").on(Topic::Finances),
    t("mortgage").on(Topic::Finances),
    t("bankrupt").on(Topic::Finances),
    t("bankruptcy").on(Topic::Finances),
    t("foreclosure").on(Topic::Finances),
    t("evicted").on(Topic::Finances),
    t("eviction").on(Topic::Finances),
    t("tax return").on(Topic::Finances),
    t("net worth").on(Topic::Finances),
    t("overdraft").on(Topic::Finances),
    t("owe").on(Topic::Finances).with(AMOUNT),
    t("behind on rent").on(Topic::Finances),
    t("pin code").on(Topic::Finances).with(VALUE),
    t("routing number").on(Topic::Finances).with(VALUE),
    t("sort code").on(Topic::Finances).with(VALUE),
    // work
    t("got fired").on(Topic::Work).not_before(&["up"]),
    t("was fired").on(Topic::Work),
    t("been fired").on(Topic::Work),
    t("get fired").on(Topic::Work),
    t("getting fired").on(Topic::Work),
    t("fired me").on(Topic::Work).with(SELF),
    t("fired from").on(Topic::Work),
    t("laid off").on(Topic::Work),
    t("lost my job").on(Topic::Work).with(SELF),
    t("unemployed").on(Topic::Work),
    t("disciplinary").on(Topic::Work),
    t("performance improvement plan").on(Topic::Work),
    // intimate and beliefs
    t("sexual orientation").on(Topic::Sexuality),
    t("gay").on(Topic::Sexuality),
    t("lesbian").on(Topic::Sexuality),
    t("bisexual").on(Topic::Sexuality),
    t("transgender").on(Topic::Sexuality),
    t("trans").on(Topic::Sexuality).with(QUIET).not_before(&[
        "fat",
        "fats",
        "atlantic",
        "pacific",
        "siberian",
        "european",
        "canada",
        "alpine",
        "isomer",
        "configuration",
        "am",
    ]),
    t("student loan").on(Topic::Finances),
    t("come out as").on(Topic::Sexuality),
    t("come out to").on(Topic::Sexuality),
    t("came out as").on(Topic::Sexuality),
    t("came out to").on(Topic::Sexuality),
    t("coming out as").on(Topic::Sexuality),
    t("coming out to").on(Topic::Sexuality),
    t("affair").on(Topic::Sexuality).not_after(&[
        "current",
        "foreign",
        "world",
        "public",
        "internal",
        "external",
        "consumer",
        "veterans",
        "regulatory",
        "academic",
        "student",
        "corporate",
        "legal",
        "military",
        "cultural",
        "international",
        "global",
        "home",
        "domestic",
        "economic",
        "political",
        "family",
        "religious",
        "community",
        "urban",
        "civil",
    ]),
    t("cheating on").on(Topic::Sexuality),
    t("cheated on").on(Topic::Sexuality),
    t("sex life").on(Topic::Sexuality),
    t("virginity").on(Topic::Sexuality),
    t("religion").on(Topic::Religion),
    t("religious beliefs").on(Topic::Religion),
    t("my faith").on(Topic::Religion).with(SELF),
    t("political views").on(Topic::Religion),
    t("union member").on(Topic::Religion),
    // a few other languages
    t("krebs"),
    t("schwanger"),
    t("scheidung").on(Topic::Legal),
    t("schulden").on(Topic::Finances),
    t("selbstmord"),
    t("suizid"),
    t("enceinte"),
    t("dépression"),
    t("avortement"),
    t("dettes").on(Topic::Finances),
    t("embarazada"),
    t("cáncer"),
    t("depresión"),
    t("ansiedad"),
    t("aborto"),
    t("divorcio").on(Topic::Legal),
    t("deudas").on(Topic::Finances),
    t("suicidarme").with(SELF),
    t("me diagnosticaron").with(SELF),
    t("diagnosticado"),
    t("diagnosticada"),
    t("diagnostiqué"),
    t("diagnostiquée"),
    t("diagnostiziert"),
    t("diagnosticato"),
    t("diagnosticata"),
    t("me suicider").with(SELF),
    t("incinta"),
    t("cancro"),
    t("depressione"),
    t("grávida"),
    t("câncer"),
    t("depressão"),
];

/// Whether a topic at `start..end` is the writer's own matter.
fn personal(text: &str, start: usize, end: usize, term: &Term, next: Option<&str>) -> bool {
    if term.has(SELF) {
        return true;
    }
    first_person(text, start, end, term, next) && !joking(text, end)
}

/// "I'm so depressed my team lost lol": hyperbole, not a disclosure. (Self-harm terms are
/// never read as jokes.)
fn joking(text: &str, end: usize) -> bool {
    let rest = text.get(end..).unwrap_or("");
    let clause = rest
        .find(['\n', '!', '?', ';'])
        .map_or(rest, |i| rest.get(..i).unwrap_or(rest));
    clause.contains(['😂', '🤣', '😅', '😆'])
        || WordsFwd::new(text, end)
            .take(16)
            .any(|(_, w)| is_any(w, &["lol", "lmao", "lmfao", "haha", "hahaha", "jk", "rofl"]))
}

fn first_person(text: &str, start: usize, end: usize, term: &Term, next: Option<&str>) -> bool {
    if term.has(AGENT) {
        return next.is_none_or(|w| !is_any(w, AGENT_NOT_BEFORE))
            && WordsBack::new(text, start)
                .take(3)
                .any(|(_, w)| is_any(w, AGENTS) || is_any(w, POSSESSIVES));
    }
    if term.has(VALUE) {
        return WordsFwd::new(text, end)
            .take(4)
            .any(|(_, w)| w.bytes().filter(u8::is_ascii_digit).count() >= 4);
    }
    // "cancer research", "loan calculator": the topic qualifies something impersonal.
    if next.is_some_and(|w| is_any(w, MODIFIED)) {
        return false;
    }
    let mut words: [&str; 20] = [""; 20];
    let mut n = 0;
    for (slot, (_, w)) in words.iter_mut().zip(WordsBack::new(text, start)) {
        *slot = w;
        n += 1;
    }
    let word = |k: usize| words.get(k).copied().unwrap_or("");
    for k in 0..n {
        let w = word(k);
        if is_any(w, HYPOTHETICAL) || (eq_word(w, "say") && is_any(word(k + 1), &["let's", "lets"]))
        {
            return false;
        }
    }
    for k in 0..n.min(7) {
        let w = word(k);
        if is_any(w, BLOCKERS) {
            return false;
        }
        if is_any(w, DIRECT) {
            // "my cat has diabetes": the possessor is not the one with the matter.
            if k >= 1 && is_any(word(k - 1), NOT_PEOPLE) {
                return false;
            }
            return true;
        }
        if is_any(w, BARE) {
            // "How do I get a loan?" asks how it is done.
            if is_any(word(k + 1), AUX) && is_any(word(k + 2), WH) {
                continue;
            }
            // The verb is the first word after the pronoun that is not an adverb; when there
            // is none, the topic is the verb ("I owe", "I just want to die").
            let verb = (0..k).rev().map(word).find(|v| !is_any(v, ADVERBS));
            if verb.is_none_or(|v| is_any(v, DISCLOSURE)) {
                return true;
            }
        }
        if eq_word(w, "me") && is_any(word(k + 1), ME_VERBS) {
            return true;
        }
        // Spanish and French "me" is the object of the verb after it: "me han diagnosticado",
        // "me embargaron la nómina".
        if eq_word(w, "me") && k >= 1 && romance_verb(word(k - 1)) {
            return true;
        }
        // "I make $85,000 a year and have $40k in student loans": a verb joined to an
        // earlier one shares its subject.
        if is_any(w, DISCLOSURE) && is_any(word(k + 1), &["and", "but", "or"]) {
            for j in k + 2..n {
                let s = word(j);
                if is_any(s, BARE) || is_any(s, DIRECT) {
                    return true;
                }
                if is_any(s, OTHER_SUBJECTS) {
                    break;
                }
            }
        }
    }
    if identity_frame(&words[..n], text, end) {
        return true;
    }
    // "Cancer took my dad", "the loan on my house".
    for (k, (_, w)) in WordsFwd::new(text, end).take(2).enumerate() {
        if is_any(w, BLOCKERS) {
            break;
        }
        if is_any(w, FORWARD) || (k == 0 && eq_word(w, "me")) {
            return true;
        }
    }
    false
}

/// A verb that follows an object pronoun "me" in Spanish or French: a form of "haber" or
/// "avoir", or a third person plural past ("diagnosticaron", "detuvieron").
fn romance_verb(w: &str) -> bool {
    let lower = w.to_lowercase();
    is_any(
        w,
        &["han", "ha", "había", "habían", "ont", "avait", "avaient"],
    ) || (lower.chars().count() > 6 && (lower.ends_with("aron") || lower.ends_with("ieron")))
}

/// "As a bisexual woman I feel ...", "en tant que musulmane, je ...", "как верующий, я ...":
/// the writer names who they are, then speaks in the first person in the same clause.
/// `back` holds the words before the topic, nearest first.
fn identity_frame(back: &[&str], text: &str, end: usize) -> bool {
    const AS: &[&str] = &["as", "als", "como", "come", "как"];
    let frame = back.iter().take(4).enumerate().any(|(j, w)| {
        let french = eq_word(w, "que") && back.get(j + 1).is_some_and(|p| eq_word(p, "tant"));
        let start = is_any(w, AS) || french;
        // The frame names the writer right away or through an article ("as a devout
        // Catholic"), not a clause ("come funziona il mutuo").
        let named = j == 0
            || back
                .get(j - 1)
                .is_some_and(|a| is_any(a, &["a", "an", "ein", "eine", "un", "una", "uno"]));
        // "such as a gay character" lists examples.
        start && named && !back.get(j + 1).is_some_and(|p| eq_word(p, "such"))
    });
    frame
        && WordsFwd::new(text, end)
            .take(12)
            .take_while(|(_, w)| !is_any(w, BLOCKERS))
            .any(|(_, w)| is_any(w, DIRECT) || is_any(w, BARE))
}

fn amount_follows(text: &str, end: usize) -> bool {
    let rest = text.get(end..).unwrap_or("").trim_start();
    if rest.starts_with(['$', '£', '€', '¥'])
        || rest.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return true;
    }
    WordsFwd::new(text, end).take(3).any(|(_, w)| {
        is_any(w, AMOUNT_WORDS) || w.bytes().next().is_some_and(|b| b.is_ascii_digit())
    })
}

// ---------------------------------------------------------------------------------------------
// Words

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> &'static PrivacyDetector {
        static DETECTOR: std::sync::OnceLock<PrivacyDetector> = std::sync::OnceLock::new();
        DETECTOR.get_or_init(PrivacyDetector::new)
    }

    fn kinds(text: &str) -> Vec<PiiKind> {
        let mut out = Vec::new();
        detector().scan_text(0, text, &mut out);
        out.into_iter().map(|f| f.kind).collect()
    }

    fn spans(text: &str) -> Vec<(PiiKind, &str)> {
        let mut out = Vec::new();
        detector().scan_text(0, text, &mut out);
        out.into_iter()
            .map(|f| (f.kind, text.get(f.start..f.end).unwrap_or("?")))
            .collect()
    }

    #[test]
    fn next_digit_finds_the_first_digit_in_any_position() {
        let text = "no digits here, then 7 and später 42";
        for from in 0..text.len() {
            let expected = text
                .bytes()
                .enumerate()
                .skip(from)
                .find(|(_, b)| b.is_ascii_digit())
                .map(|(i, _)| i);
            assert_eq!(next_digit(text.as_bytes(), from), expected, "from {from}");
        }
        assert_eq!(next_digit(b"/:;<=>?@ \xff\x80\xb9\xba", 0), None);
    }

    #[test]
    fn luhn_accepts_test_cards_and_rejects_typos() {
        assert!(luhn_ok("4111 1111 1111 1111"));
        assert!(luhn_ok("5555-5555-5555-4444"));
        assert!(!luhn_ok("4111 1111 1111 1112"));
        assert!(!luhn_ok("0000 0000 0000 0000"));
    }

    #[test]
    fn card_brands_need_a_real_issuer_prefix_and_length() {
        let d = |s: &str| -> Vec<u8> { s.bytes().map(|b| b - b'0').collect() };
        assert!(card_brand_ok(&d("4111111111111111")));
        assert!(card_brand_ok(&d("378282246310005"))); // Amex, 15
        assert!(card_brand_ok(&d("2223003122003222"))); // Mastercard 2-series
        assert!(card_brand_ok(&d("6011111111111117"))); // Discover
        assert!(card_brand_ok(&d("3530111333300000"))); // JCB
        assert!(!card_brand_ok(&d("1700000000004"))); // a timestamp
        assert!(!card_brand_ok(&d("37828224631000"))); // Amex prefix, wrong length
        assert!(!card_brand_ok(&d("9111111111111111")));
    }

    #[test]
    fn iban_mod97() {
        assert!(iban_ok("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_ok("DE89370400440532013000"));
        assert!(!iban_ok("DE89370400440532013001"));
    }

    #[test]
    fn iban_stops_at_its_country_length_or_a_valid_group_boundary() {
        let text = "IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX";
        assert_eq!(
            spans(text),
            vec![(PiiKind::Iban, "DE89 3704 0044 0532 0130 00")]
        );
        assert_eq!(
            spans("pay de89 3704 0044 0532 0130 00 EUR 500"),
            vec![(PiiKind::Iban, "de89 3704 0044 0532 0130 00")]
        );
        assert_eq!(
            iban_at(b"GB82WEST12345698765432X", 2),
            None,
            "letters glued to the end are not a boundary"
        );
    }

    #[test]
    fn card_windows_align_on_group_boundaries() {
        assert_eq!(
            spans("Card: 4111 1111 1111 1111 123"),
            vec![(PiiKind::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(
            spans("4111111111111111 12/29 123"),
            vec![(PiiKind::Card, "4111111111111111")]
        );
        assert_eq!(
            spans("Room 12 4111 1111 1111 1111"),
            vec![(PiiKind::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(
            spans("amex 3782 822463 10005"),
            vec![(PiiKind::Card, "3782 822463 10005")]
        );
        assert!(kinds("timestamp 1700000000004").is_empty());
        assert!(kinds("order id 4111111111111111").is_empty());
        assert_eq!(kinds("visa 4111111111111111"), vec![PiiKind::Card]);
    }

    #[test]
    fn phone_shapes() {
        for phone in [
            "+14155550134",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "(415) 555-0134",
            "415-555-0134",
            "415.555.0134",
            "1-800-555-0199",
            "07700 900123",
            "030 12345678",
            "01 23 45 67 89",
            "0049 30 12345678",
        ] {
            assert_eq!(
                spans(&format!("reach Sam on {phone} later")),
                vec![(PiiKind::Phone, phone)],
                "{phone}"
            );
        }
        assert_eq!(kinds("call 4155550134"), vec![PiiKind::Phone]);
        assert_eq!(kinds("my number is 555-0134"), vec![PiiKind::Phone]);
        assert_eq!(kinds("4155550134 (mobile)"), vec![PiiKind::Phone]);
    }

    #[test]
    fn numbers_that_are_not_phones() {
        for text in [
            "Sort these numbers: 34 12 89 56 23 71",
            "Meeting at 2024-01-15 10:30",
            "Invoice 2023-0042-7781",
            "Order #1234-5678-9012",
            "population 1 234 567 890",
            "version 2.10.3.1",
            "ISBN 978-3-16-148410-0",
            "4155550134",
            "account 4155550134",
            "between 1990-2000 and 2010",
            "pi is 3.14159265358979",
            "3 + 14155550134",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", spans(text));
        }
    }

    #[test]
    fn ips_are_public_hosts_and_never_phones() {
        assert_eq!(kinds("block 203.0.113.45 now"), vec![PiiKind::IpAddress]);
        assert_eq!(kinds("the server at 8.8.4.4"), vec![PiiKind::IpAddress]);
        for text in [
            "ssh to 192.168.100.200",
            "version 2.10.3.1",
            "v1.2.3.4 and 127.0.0.1 and 255.255.255.0",
            "subnet 10.0.0.0/16 via 172.20.1.1 and 100.64.0.7",
            "route 203.0.113.0/24",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", spans(text));
        }
    }

    #[test]
    fn national_ids() {
        assert_eq!(kinds("ssn 123-45-6789"), vec![PiiKind::NationalId]);
        assert_eq!(kinds("ITIN 912-70-1234"), vec![PiiKind::NationalId]);
        assert!(
            spans("my passport number is 533401272 and it expires soon")
                .contains(&(PiiKind::NationalId, "533401272"))
        );
        assert_eq!(
            spans("NI number: QQ 12 34 56 C"),
            vec![(PiiKind::NationalId, "QQ 12 34 56 C")]
        );
        assert_eq!(kinds("AB123456C"), vec![PiiKind::NationalId]);
        assert_eq!(kinds("DNI 12345678Z"), vec![PiiKind::NationalId]);
        assert!(kinds("code 12345678A").is_empty(), "wrong DNI letter");
        assert_eq!(kinds("CF RSSMRA85T10A562S"), vec![PiiKind::NationalId]);
        assert!(kinds("passport expires 12/03/2030").is_empty());
        // A passport number is a national id when one is given, not a topic.
        assert!(kinds("the passport number is required").is_empty());
        assert!(kinds("000-12-3456").is_empty());
    }

    #[test]
    fn id_values_keep_digit_groups_and_a_trailing_letter() {
        assert_eq!(id_value("533401272 and more"), Some(9));
        assert_eq!(id_value("QQ 12 34 56 C is mine"), Some(13));
        assert_eq!(id_value("required for travel"), None);
        assert_eq!(id_value("12/03/2030"), None);
        assert_eq!(id_value("42"), None);
    }

    #[test]
    fn secret_tokens_and_their_lookalikes() {
        for key in [
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "rk_live_51H8abcDEFghiJKLmnoPQR",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "glpat-AbCdEf1234567890xYz0",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "sk-proj-abcdefghijklmnopqrstuvwx",
        ] {
            assert_eq!(
                kinds(&format!("use {key} here")),
                vec![PiiKind::Secret],
                "{key}"
            );
        }
        assert!(kinds("install sk-learn-tutorial-for-beginners-2024").is_empty());
        assert!(kinds("export KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxx").is_empty());
        assert_eq!(
            spans("postgres://admin:S3cr3t!@db.internal:5432/app"),
            vec![(PiiKind::Secret, "S3cr3t!")]
        );
        assert!(kinds("postgres://user:password@localhost/db").is_empty());
    }

    #[test]
    fn credential_assignments_need_a_credential_like_value() {
        for text in [
            "my password is hunter2",
            "My password for gmail is hunter2",
            "password: Tr0ub4dor&3 stopped working",
            "my wifi password is sunshine",
            "DB_PASSWORD=supersecret",
            "SECRET_KEY = 'django-insecure-9x8f7a6s5d4f'",
            "\"api_key\": \"a8f5f167f44f4964e6c998dee827110c\"",
            "Mein Passwort ist Sommer2024",
            "PIN: 4821",
            "my PIN is 4821",
            "My password’s Tr0ub4dor",
        ] {
            assert_eq!(kinds(text), vec![PiiKind::Secret], "{text}");
        }
        for text in [
            "api_key = os.getenv(\"OPENAI_API_KEY\")",
            "password = request.form[\"password\"]",
            "pwd = os.getcwd()",
            "The secret is to use cold butter.",
            "The pin is connected to ground",
            "the password is stored hashed",
            "password: str",
            "if password is None:",
            "password = self.password",
            "password = user_password",
            "int pin = 13;",
            "The default password is admin",
            "token = get_token()",
            "the token is expired",
            "API_KEY = \"YOUR_API_KEY\"",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", spans(text));
        }
    }

    #[test]
    fn addresses_need_capitalised_street_names() {
        assert_eq!(kinds("I live at 221 Baker Street"), vec![PiiKind::Address]);
        assert_eq!(
            spans("send it to 42 Wallaby Way, Sydney"),
            vec![(PiiKind::Address, "42 Wallaby Way")]
        );
        assert_eq!(
            spans("Meine Adresse: Hauptstraße 5, Berlin"),
            vec![(PiiKind::Address, "Hauptstraße 5")]
        );
        assert_eq!(
            spans("Vivo en Calle Mayor 5"),
            vec![(PiiKind::Address, "Calle Mayor 5")]
        );
        assert_eq!(
            spans("Rue de Rivoli 10"),
            vec![(PiiKind::Address, "Rue de Rivoli 10")]
        );
        assert_eq!(
            spans("j'habite au 10 rue de Rivoli"),
            vec![(PiiKind::Address, "10 rue de Rivoli")]
        );
        for text in [
            "Find the area of a 5 cm square",
            "3 apples on the way",
            "9 judges of the supreme court",
            "the 9 Supreme Court justices",
            "Spring 2024 schedule",
            "Chapter 5 Main ideas",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", spans(text));
        }
    }

    #[test]
    fn emails_are_found_by_their_at_sign() {
        assert_eq!(
            spans("mail me at jane.doe@example.com."),
            vec![(PiiKind::Email, "jane.doe@example.com")]
        );
        for text in [
            "@app.route('/')",
            "npm i foo@1.2.3",
            "git@github.com:org/repo.git",
            "user@localhost",
        ] {
            assert!(kinds(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn words_back_stop_at_the_clause_and_read_curly_apostrophes() {
        let text = "Fine. I’ve got a loan";
        let at = text.find("loan").unwrap_or(0);
        let words: Vec<&str> = WordsBack::new(text, at).map(|(_, w)| w).collect();
        assert_eq!(words, vec!["a", "got", "I’ve"]);
        assert!(is_any("I’ve", DIRECT));
        assert!(is_any("company's", BLOCKERS));
        let fwd: Vec<&str> = WordsFwd::new("cancer took my dad. And", 6)
            .map(|(_, w)| w)
            .collect();
        assert_eq!(fwd, vec!["took", "my", "dad"]);
    }

    #[test]
    fn topics_count_more_in_the_first_person() {
        assert_eq!(kinds("what is diabetes?"), vec![PiiKind::TopicMention]);
        assert_eq!(
            kinds("I was diagnosed with diabetes"),
            vec![PiiKind::SensitiveTopic, PiiKind::SensitiveTopic]
        );
        assert_eq!(
            kinds("I’ve been diagnosed with HIV."),
            vec![PiiKind::SensitiveTopic, PiiKind::SensitiveTopic]
        );
        assert_eq!(
            kinds("i think i want to kill myself"),
            vec![PiiKind::SensitiveTopic]
        );
        assert_eq!(kinds("my husband hits me"), vec![PiiKind::SensitiveTopic]);
        assert!(kinds("he beat me at chess").is_empty());
        assert!(kinds("I owe you one").is_empty());
        assert_eq!(
            kinds("I owe $4,000 on my card"),
            vec![PiiKind::SensitiveTopic]
        );
    }

    #[test]
    fn ipv6_hosts_are_public_addresses_only() {
        for ip in [
            "2001:db8:85a3::8a2e:370:7334",
            "2606:4700:4700::1111",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
        ] {
            assert_eq!(
                spans(&format!("my host is {ip}, thanks")),
                vec![(PiiKind::IpAddress, ip)],
                "{ip}"
            );
        }
        for text in [
            "listen on [::1]:3000",
            "fe80::1ff:fe23:4567:890a%eth0",
            "fd12:3456:789a::1 inside",
            "use std::io::Result;",
            "a::b and c::d",
            "10:30:45",
            "ff02::1 multicast",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", spans(text));
        }
    }

    #[test]
    fn mac_addresses_in_three_notations() {
        for mac in ["00:1A:2B:3C:4D:5E", "a4-5e-60-d2-3f-11", "001a.2b3c.4d5e"] {
            assert_eq!(
                spans(&format!("device {mac} drops")),
                vec![(PiiKind::MacAddress, mac)],
                "{mac}"
            );
        }
        assert_eq!(
            kinds("MAC 00-14-22-01-23-45"),
            vec![PiiKind::MacAddress],
            "digits only, after a MAC word"
        );
        for text in [
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "code 12-34-56-78-90-12",
            "version 1234.5678.9012",
        ] {
            assert!(
                !kinds(text).contains(&PiiKind::MacAddress),
                "{text}: {:?}",
                spans(text)
            );
        }
    }

    #[test]
    fn dates_of_birth_need_a_birth_word() {
        for (text, date) in [
            ("DOB: 03/04/1985", "03/04/1985"),
            ("I was born on 12 March 1985 in Leeds", "12 March 1985"),
            ("born on July 4th, 1976", "July 4th, 1976"),
            ("Geburtsdatum: 12.03.1985", "12.03.1985"),
            ("né le 12 mars 1985 à Lyon", "12 mars 1985"),
            ("nací el 5 de mayo de 1990", "5 de mayo de 1990"),
            ("дата рождения: 12.03.1985", "12.03.1985"),
            ("я родился 5 мая 1990 года", "5 мая 1990"),
        ] {
            assert!(
                spans(text).contains(&(PiiKind::DateOfBirth, date)),
                "{text}: {:?}",
                spans(text)
            );
        }
        for text in [
            "Deadline is 03/04/2025",
            "Mozart was born in 1756",
            "The company was born on a napkin in 2009",
            "born on 45/13/1990",
            "born on Blursday 3, 1990",
        ] {
            assert!(
                !kinds(text).contains(&PiiKind::DateOfBirth),
                "{text}: {:?}",
                spans(text)
            );
        }
    }

    #[test]
    fn russian_stems_take_endings_but_not_other_words() {
        let topics = |text: &str| -> Vec<Option<Topic>> {
            let mut out = Vec::new();
            detector().scan_text(0, text, &mut out);
            out.into_iter()
                .filter(|f| f.kind == PiiKind::SensitiveTopic)
                .map(|f| f.topic)
                .collect()
        };
        assert_eq!(topics("У меня депрессия"), vec![Some(Topic::Health)]);
        assert_eq!(topics("Я страдаю от депрессии"), vec![Some(Topic::Health)]);
        assert_eq!(topics("у меня долги"), vec![Some(Topic::Finances)]);
        assert!(topics("мой долгий путь домой").is_empty());
        assert!(topics("я купил ракету").is_empty());
    }

    #[test]
    fn policy_words_and_patterns_extend_the_detector() {
        let policy = crate::Policy::from_toml(
            "[privacy.topics]\nreligion = [\"Pastafarian\"]\n[[privacy.patterns]]\nregex = 'EMP-\\d{6}'\ncategory = \"employee_id\"\nweight = 0.9\n[[privacy.patterns]]\nregex = 'PAT\\d{8}'\ncategory = \"national_id\"\n",
            "t.toml",
        )
        .unwrap_or_default();
        let d = PrivacyDetector::with_policy(&policy.privacy).unwrap_or_default();
        let req = ChatRequest::user("I'm a Pastafarian; EMP-123456 and PAT12345678 are mine");
        let report = d.scan(&req);
        let names: Vec<(&str, usize)> = report
            .categories
            .iter()
            .map(|c| (c.category.as_str(), c.count))
            .collect();
        assert_eq!(
            names,
            vec![("employee_id", 1), ("national_id", 1), ("religion", 1)]
        );
        let emp = report
            .findings
            .iter()
            .find(|f| matches!(f.kind, PiiKind::Custom(0)));
        assert_eq!(emp.map(|f| f.weight), Some(0.9));
        assert_eq!(PrivacyDetector::new().scan(&req).categories.len(), 0);
    }

    #[test]
    fn message_labels_raise_the_score() {
        let req = ChatRequest::new(vec![
            elmroute_core::Message::user("the plan").with_sensitivity(Sensitivity::Internal),
        ]);
        assert!(detector().scan(&req).score >= 0.5);
    }

    #[test]
    fn asking_about_a_topic_is_not_having_it() {
        for text in [
            "Can you help me write an essay about the history of cancer research?",
            "How can we reduce technical debt in our codebase?",
            "What are the symptoms of a memory leak in my app?",
            "I have a bug: use std::collections::HashMap;",
            "I'm building a loan calculator in Python",
            "Suppose we have a loan of $1000 at 5% for 3 years",
            "I follow current affairs closely",
            "How do I get a loan with bad credit?",
            "I read that coffee lowers cancer risk",
            "I'm a nurse and need to explain chemotherapy to patients",
        ] {
            assert!(
                !kinds(text).contains(&PiiKind::SensitiveTopic),
                "{text}: {:?}",
                spans(text)
            );
        }
    }

    /// The topics found as the writer's own matter in `text`.
    fn personal_topics(text: &str) -> Vec<Topic> {
        let mut out = Vec::new();
        detector().scan_text(0, text, &mut out);
        out.into_iter()
            .filter(|f| f.kind == PiiKind::SensitiveTopic)
            .filter_map(|f| f.topic)
            .collect()
    }

    #[test]
    fn national_phone_formats_with_slashes_and_dotted_pairs() {
        assert_eq!(
            spans("erreichbar unter 0171/9876543 ab 17 Uhr"),
            vec![(PiiKind::Phone, "0171/9876543")]
        );
        assert_eq!(
            spans("mon portable : 07.81.22.45.90"),
            vec![(PiiKind::Phone, "07.81.22.45.90")]
        );
        // Dates and versions keep their slashes and dots.
        assert!(kinds("am 01/02/2023 um 10:30").is_empty());
        assert!(kinds("firmware 01.02.03.04.05").is_empty());
        assert!(kinds("OID 07.81.22.45.90").is_empty());
        // An id word right before a number in any of the languages beats a cue further back.
        assert!(kinds("numéro de commande 4021-778-3390").is_empty());
        assert!(kinds("numero ordine 347 123 4567").is_empty());
        assert!(kinds("su número de pedido es 408-229-1837").is_empty());
    }

    #[test]
    fn command_line_passwords_and_short_keywords() {
        assert_eq!(
            spans("mysql -u root -pS3cr3tP4ss shop_db"),
            vec![(PiiKind::Secret, "S3cr3tP4ss")]
        );
        assert_eq!(
            spans("sshpass -p 'S3cret!' ssh deploy@host"),
            vec![(PiiKind::Secret, "S3cret!")]
        );
        // The password prompt, not a password.
        assert!(kinds("mysql -u root -p shop_db").is_empty());
        assert!(kinds("git log -p HEAD~3").is_empty());
        assert_eq!(
            spans("login: jsmith / pw: Kx9#mQ2!vL"),
            vec![(PiiKind::Secret, "Kx9#mQ2!vL")]
        );
        assert_eq!(
            spans("la password della mail è Pizza4Ever#"),
            vec![(PiiKind::Secret, "Pizza4Ever#")]
        );
    }

    #[test]
    fn abbreviated_streets_and_verb_final_births() {
        assert_eq!(
            spans("Lieferadresse: Kaiserstr. 5a, Frankfurt"),
            vec![(PiiKind::Address, "Kaiserstr. 5a")]
        );
        assert!(kinds("Das ist alles. 5 Leute kamen").is_empty());
        assert_eq!(
            spans("ich bin am 12. Juni 1985 geboren"),
            vec![(PiiKind::DateOfBirth, "12. Juni 1985")]
        );
        assert_eq!(
            spans("я 7 марта 1991 года родилась"),
            vec![(PiiKind::DateOfBirth, "7 марта 1991")]
        );
        assert!(kinds("ich wurde 1985 in Köln geboren").is_empty());
    }

    #[test]
    fn identity_frames_clitics_and_italian_terms_are_personal() {
        assert_eq!(
            personal_topics("as a bisexual woman I feel invisible"),
            vec![Topic::Sexuality]
        );
        assert_eq!(
            personal_topics("En tant que juif, je ne travaille pas le samedi"),
            vec![Topic::Religion]
        );
        assert!(personal_topics("such as a gay character in my novel").is_empty());
        assert!(personal_topics("come funziona il mutuo? io non lo so").is_empty());
        assert!(
            personal_topics("Me han embargado la nómina por una deuda").contains(&Topic::Finances)
        );
        assert_eq!(
            personal_topics("Non riesco più a pagare il mutuo"),
            vec![Topic::Finances]
        );
        assert_eq!(
            personal_topics("Soffro di attacchi di panico"),
            vec![Topic::Health]
        );
        assert!(personal_topics("Spiegami come funziona il mutuo a tasso fisso").is_empty());
        assert!(personal_topics("Non riesco a far funzionare il processo di build").is_empty());
    }

    #[test]
    fn dotted_cards_and_article_codes() {
        // 5381 7839 7052 3279 passes Luhn; written with dots it is still a card.
        assert_eq!(
            spans("but 5381.7839.7052.3279 failed"),
            vec![(PiiKind::Card, "5381.7839.7052.3279")]
        );
        assert!(kinds("codice articolo 00123-456-789").is_empty());
    }
}
