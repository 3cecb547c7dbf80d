//! How demanding a request is: a cheap, explainable estimate from the prompt's features.
//!
//! The default [`HeuristicComplexity`] looks at what predicts that a small on-device model
//! will do badly: long prompts, asks for reasoning, maths or code, several steps, long
//! answers, deep conversations and large `max_tokens`. Everything is counted in one pass of
//! an Aho-Corasick automaton, so the cost is linear in the prompt and small. Apps with a
//! learned router (a RouteLLM-style classifier, an embedding model) plug it in through
//! [`ComplexityScorer`].

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use elmroute_core::{ChatRequest, Role};

/// Scores how demanding a request is, 0 (trivial) to 1 (needs the strongest model).
///
/// Implementations must be cheap (they run on every request, before any model) and should be
/// monotone: more of what makes a request hard must never lower the score.
pub trait ComplexityScorer: Send + Sync {
    /// The score, in 0..=1.
    fn score(&self, request: &ChatRequest) -> f32;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feature {
    Reasoning,
    Math,
    Code,
    Steps,
    LongOutput,
    Simple,
    /// "500 words", "a 2000-word essay": long or short output, by the number before it.
    WordCount,
}

const MARKERS: &[(Feature, &[&str])] = &[
    (
        Feature::Reasoning,
        &[
            "why",
            "explain",
            "analyze",
            "analyse",
            "analysis",
            "compare",
            "contrast",
            "evaluate",
            "justify",
            "prove",
            "derive",
            "reason about",
            "reasoning",
            "implications",
            "trade-off",
            "tradeoff",
            "trade off",
            "pros and cons",
            "critique",
            "step by step",
            "step-by-step",
            "in depth",
            "in-depth",
            "assess",
            "argue",
            "hypothesis",
            "hypothesize",
            "infer",
            "deduce",
            "what would happen",
            "how would",
            "design a",
            "architect",
            "strategy",
            "recommend",
            "diagnose",
            "root cause",
            "debate",
            "nuance",
            "consequences",
            "critically",
            "explique",
            "expliquer",
            "pourquoi",
            "démontre",
            "démontrer",
            "analyse",
            "analyser",
            "comparer",
            "explica",
            "explicar",
            "por qué",
            "analiza",
            "analizar",
            "demuestra",
            "compara",
            "erkläre",
            "erklären",
            "warum",
            "beweise",
            "analysiere",
            "vergleiche",
            "spiega",
            "perché",
            "dimostra",
            "analizza",
            "porque",
            "demonstre",
        ],
    ),
    (
        Feature::Math,
        &[
            "equation",
            "integral",
            "derivative",
            "theorem",
            "proof",
            "matrix",
            "matrices",
            "eigen",
            "probability",
            "calculate",
            "compute",
            "solve",
            "optimize",
            "optimise",
            "differential",
            "polynomial",
            "statistic",
            "regression",
            "variance",
            "logarithm",
            "lemma",
            "induction",
            "combinatorics",
            "bayes",
            "gradient",
            "algebra",
            "calculus",
            "geometry",
            "vector",
            "fourier",
            "integrate",
            "limit of",
            "modulo",
            "prime number",
            "primes",
            "\u{222b}",
            "\u{2211}",
            "\u{221a}",
            "\u{03c0}",
            "x^2",
            "^2",
            "dx",
        ],
    ),
    (
        Feature::Code,
        &[
            "```",
            "function",
            "class ",
            "compile",
            "compiler",
            "debug",
            "refactor",
            "implement",
            "algorithm",
            "python",
            "rust",
            "javascript",
            "typescript",
            "java ",
            "c++",
            "golang",
            "sql",
            "regex",
            "api",
            "stack trace",
            "traceback",
            "exception",
            "segfault",
            "segmentation fault",
            "def ",
            "fn ",
            "#include",
            "import ",
            "=>",
            "();",
            "async",
            "thread",
            "concurren",
            "database",
            "kubernetes",
            "docker",
            "unit test",
            "big-o",
            "complexity of",
            "data structure",
            "binary tree",
            "linked list",
            "hash map",
            "hashmap",
            "recursion",
            "recursive",
            "code",
            "error",
            "bug",
            "borrow checker",
            "null pointer",
            "memory leak",
            "crash",
            "syntax",
            "deadlock",
            "race condition",
            "stack overflow",
        ],
    ),
    (
        Feature::Steps,
        &[
            "first,",
            "then ",
            "next,",
            "finally",
            "after that",
            "afterwards",
            "step ",
            "steps",
            "and then",
            "followed by",
            "also ",
            "additionally",
            "as well as",
            "multiple",
            "each of",
            "for each",
            "\n1.",
            "\n2.",
            "\n3.",
            "\n- ",
            "\n* ",
        ],
    ),
    (
        Feature::LongOutput,
        &[
            "essay",
            "report",
            "detailed",
            "comprehensive",
            "thorough",
            "in detail",
            "article",
            "pages",
            "complete guide",
            "full guide",
            "plan for",
            "outline",
            "story",
            "chapter",
            "whitepaper",
            "white paper",
            "tutorial",
            "lesson plan",
            "business plan",
            "cover letter",
            "long-form",
            "exhaustive",
            "itinerary",
            "curriculum",
            "syllabus",
            "proposal",
            "specification",
            "budget",
            "en détail",
            "détaillé",
            "détaillée",
            "detallado",
            "detallada",
            "ausführlich",
            "ausführliche",
            "dettagliato",
            "detalhado",
            "dissertation",
            "aufsatz",
            "ensayo",
        ],
    ),
    (Feature::WordCount, &["words", "-word"]),
    (
        Feature::Simple,
        &[
            "what is",
            "what's",
            "who is",
            "define",
            "definition of",
            "translate",
            "spell",
            "hello",
            "thanks",
            "thank you",
            "capital of",
            "synonym",
            "antonym",
            "tl;dr",
            "quick question",
            "yes or no",
            "one word",
            "short answer",
            "remind me",
            "what time",
            "how do you say",
            "convert",
            "good morning",
            "briefly",
            "in simple terms",
            "in one sentence",
            "eli5",
            "bonjour",
            "hola",
            "hallo",
            "merci",
            "gracias",
            "danke",
        ],
    ),
];

/// Weights of the default scorer, exposed so apps can tune them without writing a scorer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeuristicWeights {
    /// Prompt length (saturates around a few thousand bytes).
    pub length: f32,
    /// Reasoning asks.
    pub reasoning: f32,
    /// Maths.
    pub math: f32,
    /// Code.
    pub code: f32,
    /// Multi-step asks.
    pub steps: f32,
    /// Requests for long output.
    pub long_output: f32,
    /// Conversation depth.
    pub depth: f32,
    /// Requested `max_tokens`.
    pub max_tokens: f32,
    /// Markers of a simple ask, subtracted.
    pub simple: f32,
}

impl Default for HeuristicWeights {
    fn default() -> Self {
        Self {
            length: 0.9,
            reasoning: 0.45,
            math: 0.45,
            code: 0.45,
            steps: 0.3,
            long_output: 0.35,
            depth: 0.25,
            max_tokens: 0.4,
            simple: 0.25,
        }
    }
}

/// The default complexity scorer: prompt features counted in one pass.
#[derive(Debug, Clone)]
pub struct HeuristicComplexity {
    automaton: Option<AhoCorasick>,
    features: Vec<Feature>,
    weights: HeuristicWeights,
}

/// What the scorer found in a request, before weighting.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ComplexityFeatures {
    /// Bytes in the last user message.
    pub bytes: usize,
    /// Reasoning markers found.
    pub reasoning: u32,
    /// Maths markers found (including operator-digit patterns).
    pub math: u32,
    /// Code markers found.
    pub code: u32,
    /// Multi-step markers found (including question marks beyond the first).
    pub steps: u32,
    /// Long-output markers found.
    pub long_output: u32,
    /// Simple-ask markers found.
    pub simple: u32,
    /// Messages in the conversation.
    pub messages: usize,
    /// Requested `max_tokens`.
    pub max_tokens: Option<u32>,
}

impl HeuristicComplexity {
    /// The scorer with default weights.
    pub fn new() -> Self {
        Self::with_weights(HeuristicWeights::default())
    }

    /// The scorer with the given weights.
    pub fn with_weights(weights: HeuristicWeights) -> Self {
        let mut patterns: Vec<&str> = Vec::new();
        let mut features = Vec::new();
        for (feature, words) in MARKERS {
            for w in *words {
                // Overlapping matching reports every pattern, so a duplicate would count twice.
                if !patterns.iter().any(|p| p.eq_ignore_ascii_case(w)) {
                    patterns.push(w);
                    features.push(*feature);
                }
            }
        }
        // The marker list is fixed and valid, so building does not fail; if it ever did, the
        // scorer would still work on length, depth and max_tokens alone rather than panic.
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            // Overlapping, so "step by step" counts as reasoning and as steps, and adding
            // text can never hide a marker found before (the score stays monotone).
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .ok();
        Self {
            automaton,
            features,
            weights,
        }
    }

    /// Counts the features of a request.
    pub fn features(&self, request: &ChatRequest) -> ComplexityFeatures {
        let text = request.last_user_text();
        let bytes = text.as_bytes();
        let mut f = ComplexityFeatures {
            bytes: text.len(),
            messages: request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .count(),
            max_tokens: request.max_tokens,
            ..Default::default()
        };
        for m in self
            .automaton
            .iter()
            .flat_map(|a| a.find_overlapping_iter(text))
        {
            let pat = m.pattern().as_usize();
            let Some(feature) = self.features.get(pat).copied() else {
                continue;
            };
            // Word markers must start at a word boundary ("rust" in "trust" is not code); a
            // marker that itself starts with punctuation or a newline is taken as is.
            let first = bytes.get(m.start()).copied().unwrap_or(b' ');
            if first.is_ascii_alphanumeric() && m.start() > 0 {
                let prev = bytes.get(m.start() - 1).copied().unwrap_or(b' ');
                if prev.is_ascii_alphanumeric() {
                    continue;
                }
            }
            match feature {
                Feature::Reasoning => f.reasoning += 1,
                Feature::Math => f.math += 1,
                Feature::Code => f.code += 1,
                Feature::Steps => f.steps += 1,
                Feature::LongOutput => f.long_output += 1,
                Feature::Simple => f.simple += 1,
                Feature::WordCount => match number_before(bytes, m.start()) {
                    Some(n) if n >= 300 => f.long_output += 1,
                    Some(n) if n > 0 && n <= 100 => f.simple += 1,
                    _ => {}
                },
            }
        }
        // Arithmetic between digits ("3 * 4", "2x+1=5") and extra questions, counted bytewise.
        let mut questions = 0u32;
        let mut last_digit = usize::MAX;
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'?' => questions += 1,
                b'0'..=b'9' => last_digit = i,
                b'=' | b'+' | b'*' | b'^' | b'<' | b'>'
                    if last_digit != usize::MAX && i - last_digit <= 2 =>
                {
                    f.math += 1;
                    last_digit = usize::MAX;
                }
                // Division only with spaces ("3 / 4"): "12/05/2024" is a date.
                b'/' if last_digit != usize::MAX
                    && i - last_digit == 2
                    && bytes.get(i - 1) == Some(&b' ')
                    && bytes.get(i + 1) == Some(&b' ') =>
                {
                    f.math += 1;
                    last_digit = usize::MAX;
                }
                _ => {}
            }
        }
        f.steps += questions.saturating_sub(1);
        f
    }

    /// The score for counted features.
    pub fn score_features(&self, f: &ComplexityFeatures) -> f32 {
        let w = &self.weights;
        let sat = |n: u32, k: f32| (n as f32 / k).min(1.0);
        let length = 1.0 - (-(f.bytes as f32) / 1500.0).exp();
        let depth = 1.0 - (-(f.messages.saturating_sub(1) as f32) / 8.0).exp();
        let max_tokens = f.max_tokens.map_or(0.0, |t| {
            ((t.max(1) as f32 / 256.0).ln() / 16f32.ln()).clamp(0.0, 1.0)
        });
        let hard = w.length * length
            + w.reasoning * sat(f.reasoning, 2.0)
            + w.math * sat(f.math, 2.0)
            + w.code * sat(f.code, 2.0)
            + w.steps * sat(f.steps, 3.0)
            + w.long_output * sat(f.long_output, 1.0)
            + w.depth * depth
            + w.max_tokens * max_tokens;
        // Simple-ask markers only discount short prompts without code or maths: "what is" at
        // the head of a long technical question, or "translate this C++ into Rust", is not
        // easy.
        let simple = if f.simple > 0 && f.code == 0 && f.math == 0 {
            w.simple * (1.0 - length)
        } else {
            0.0
        };
        let z = (hard - simple).max(0.0);
        (1.0 - (-1.6 * z).exp()).clamp(0.0, 1.0)
    }
}

/// The number written just before `at` ("500 words", "2000-word"), if any.
fn number_before(bytes: &[u8], at: usize) -> Option<u64> {
    let mut end = at;
    while end > 0 && matches!(bytes.get(end - 1), Some(b' ' | b'-')) {
        end -= 1;
    }
    let mut start = end;
    while start > 0
        && bytes
            .get(start - 1)
            .is_some_and(|b| b.is_ascii_digit() || *b == b',')
    {
        start -= 1;
    }
    let digits: String = bytes
        .get(start..end)?
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|&b| char::from(b))
        .take(9)
        .collect();
    digits.parse().ok()
}

impl Default for HeuristicComplexity {
    fn default() -> Self {
        Self::new()
    }
}

impl ComplexityScorer for HeuristicComplexity {
    fn score(&self, request: &ChatRequest) -> f32 {
        self.score_features(&self.features(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(p: &str) -> f32 {
        HeuristicComplexity::new().score(&ChatRequest::user(p))
    }

    #[test]
    fn trivial_asks_score_low_and_hard_asks_high() {
        assert!(score("What is the capital of France?") < 0.2);
        assert!(score("hello!") < 0.2);
        let hard = "Explain step by step how to derive the closed-form solution of ordinary least \
                    squares regression, prove the estimator is unbiased, then implement it in \
                    Rust with unit tests.";
        assert!(score(hard) > 0.7, "{}", score(hard));
    }

    #[test]
    fn markers_need_word_boundaries() {
        let f = HeuristicComplexity::new().features(&ChatRequest::user("I trust my coworkers"));
        assert_eq!(f.code, 0);
    }

    #[test]
    fn step_by_step_counts_for_reasoning_and_steps_so_more_text_never_scores_less() {
        let a = score("Explain why the sky is blue. Go step by");
        let b = score("Explain why the sky is blue. Go step by step");
        assert!(b >= a, "{a} -> {b}");
    }

    #[test]
    fn translating_code_is_not_a_simple_ask() {
        assert!(score("Translate this C++ template metaprogram into idiomatic Rust traits") > 0.4);
        assert!(score("Translate 'good morning' into Spanish") < 0.2);
    }

    #[test]
    fn word_counts_mean_long_or_short_output() {
        let h = HeuristicComplexity::new();
        let f = h.features(&ChatRequest::user("write a 2000-word essay"));
        assert!(f.long_output >= 2);
        let f = h.features(&ChatRequest::user("answer in 20 words"));
        assert_eq!((f.long_output, f.simple), (0, 1));
    }

    #[test]
    fn dates_are_not_arithmetic_but_spaced_division_is() {
        let h = HeuristicComplexity::new();
        assert_eq!(h.features(&ChatRequest::user("on 12/05/2024")).math, 0);
        assert_eq!(h.features(&ChatRequest::user("what is 3 / 4")).math, 1);
        assert_eq!(h.features(&ChatRequest::user("the prime minister")).math, 0);
    }

    #[test]
    fn arithmetic_counts_as_math() {
        let f = HeuristicComplexity::new().features(&ChatRequest::user("is 3*4=12"));
        assert!(f.math >= 2);
    }
}
