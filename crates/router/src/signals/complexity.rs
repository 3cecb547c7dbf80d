//! How demanding a request is: a cheap, explainable estimate from the prompt's features.
//!
//! The default [`HeuristicComplexity`] looks at what predicts that a small on-device model
//! will do badly: long prompts, asks for reasoning, maths or code, several steps, long
//! answers, deep conversations and large `max_tokens`, with markers in English, German,
//! French, Spanish, Italian, Russian, Chinese and Japanese. Some asks are hard however short
//! (a proof, an implementation); some are easy however long (fix the typos in, translate or
//! summarise pasted text, a question about a pasted code block), so markers in pasted
//! material and inside code fences are not taken as instructions. Everything is counted in
//! one pass of an Aho-Corasick automaton, so the cost is linear in the prompt and small.
//! Apps with a learned router (a RouteLLM-style classifier, an embedding model) plug it in
//! through [`ComplexityScorer`].

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
    /// Asks a small model cannot meet however short they are: proofs, implementations.
    Demanding,
    /// Asks to transform text the user pasted (fix the typos, translate, summarise): what
    /// follows them is material, not instructions.
    Transform,
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
            "design",
            "differences",
            "diferencias",
            "différences",
            "unterschiede",
            "differenze",
            "различия",
            "区别",
            "違い",
            "consecuencias",
            "conséquences",
            "conseguenze",
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
            "analyse",
            "analyser",
            "comparer",
            "explica",
            "explicar",
            "por qué",
            "analiza",
            "analizar",
            "compara",
            "erkläre",
            "erklären",
            "warum",
            "analysiere",
            "vergleiche",
            "spiega",
            "perché",
            "analizza",
            "porque",
            "análisis",
            "explíca",
            "analisi",
            "confronta",
            "begründe",
            "advantages and disadvantages",
            "vor- und nachteile",
            "vorteile und nachteile",
            "avantages et",
            "inconvénients",
            "ventajas y desventajas",
            "vantaggi e svantaggi",
            "объясни",
            "почему",
            "сравни",
            "проанализируй",
            "анализ",
            "плюсы и минусы",
            "преимущества и недостатки",
            "解释",
            "为什么",
            "分析",
            "比较",
            "优缺点",
            "优点",
            "缺点",
            "説明",
            "なぜ",
            "比較",
            "メリット",
            "デメリット",
        ],
    ),
    (
        Feature::Math,
        &[
            "equation",
            "integral",
            "derivative",
            "theorem",
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
            "irrational",
            "ecuaci",
            "équation",
            "equazion",
            "gleichung",
            "converge",
            "compound",
            "estimate",
            "show that",
            "demonstrate that",
            "integer",
            "even number",
            "odd number",
            "divisible",
            "show your work",
            "show the work",
            "show the math",
            "show all steps",
            "primzahl",
            "irrationnel",
            "irracional",
            "irrazionale",
            "numeri primi",
            "nombres premiers",
            "números primos",
            "иррацион",
            "простых чисел",
            "уравнени",
            "无理数",
            "無理数",
            "素数",
            "方程",
            "积分",
            "積分",
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
            "algorit",
            "implement",
            "python",
            "rust",
            "javascript",
            "typescript",
            "java",
            "bash",
            "shell",
            "script",
            "powershell",
            "kotlin",
            "haskell",
            "tokeniz",
            "lexer",
            "parser",
            "interpreter",
            "lru",
            "doesn't compile",
            "does not compile",
            "doesn't work",
            "does not work",
            "not working",
            "codice",
            "código",
            "函数",
            "代码",
            "算法",
            "複雑度",
            "复杂度",
            "関数",
            "コード",
            "スレッド",
            "функци",
            "алгоритм",
            "speed up",
            "speed it up",
            "dynamic programming",
            "動的計画",
            "动态规划",
            "динамическ",
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
            "detailliert",
            "projektplan",
            "project plan",
            "study plan",
            "ensayo",
            "plan de negocios",
            "businessplan",
            "informe",
            "rapport",
            "bericht",
            "relazione",
            "saggio",
            "подробн",
            "отчёт",
            "отчет",
            "эссе",
            "报告",
            "论文",
            "详细",
            "詳しく",
            "詳細",
            "レポート",
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
            "ciao",
            "grazie",
            "привет",
            "спасибо",
            "你好",
            "谢谢",
            "こんにちは",
            "ありがとう",
        ],
    ),
    (
        Feature::Demanding,
        &[
            "prove",
            "proof",
            "proofs",
            "derive",
            "implement a",
            "implement an",
            "implementa un",
            "implémente un",
            "implémenter un",
            "implementiere ein",
            "write a program",
            "write a script",
            "write a function",
            "write code",
            "write a class",
            "напиши функцию",
            "напиши программу",
            "напиши код",
            "écris une fonction",
            "écris un programme",
            "escribe una función",
            "escribe un programa",
            "scrivi una funzione",
            "scrivi un programma",
            "schreibe eine funktion",
            "schreibe ein programm",
            "写代码",
            "写出代码",
            "写一个函数",
            "コードを書いて",
            "démontre",
            "démontrer",
            "demuestra",
            "demostrar",
            "demonstre",
            "beweise",
            "dimostra",
            "докажи",
            "доказать",
            "реализуй",
            "证明",
            "証明",
            "实现",
            "実装",
        ],
    ),
    (
        Feature::Transform,
        &[
            "fix the typo",
            "fix typos",
            "fix the spelling",
            "fix the grammar",
            "fix grammar",
            "correct",
            "proofread",
            "rewrite",
            "rephrase",
            "paraphrase",
            "reword",
            "shorten",
            "make this",
            "make it",
            "turn this",
            "polish",
            "summarize",
            "summarise",
            "summary of",
            "translate",
            "übersetze",
            "korrigiere",
            "fasse",
            "traduis",
            "traduire",
            "corrige",
            "résume",
            "traduce",
            "traduzca",
            "traduci",
            "correggi",
            "riassumi",
            "переведи",
            "исправь",
            "перескажи",
            "翻译",
            "翻訳",
            "总结",
            "要約",
        ],
    ),
];

/// Markers that must also end at a word boundary: "proof" is not "proofread", "rust" is not
/// "rusty", "java" is a language, "javanese" is not.
const WHOLE_WORDS: &[&str] = &["proof", "proofs", "rust", "java", "bash", "shell", "lru"];

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
    /// Asks that are hard however short: a proof, an implementation (one is enough).
    pub demanding: f32,
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
            demanding: 0.5,
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
    /// Per pattern: must it end at a word boundary too?
    whole: Vec<bool>,
    weights: HeuristicWeights,
}

/// What the scorer found in a request, before weighting.
///
/// Markers inside fenced code blocks are not counted (the block is material, what is asked
/// about it is outside), and neither are markers in text pasted after a transform ask ("Fix
/// the typos: ...", "Translate this: ..."), whose length also counts half.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ComplexityFeatures {
    /// Bytes in the last user message.
    pub bytes: usize,
    /// Bytes of material pasted after a transform ask; they count half toward length.
    pub pasted_bytes: usize,
    /// Reasoning markers found.
    pub reasoning: u32,
    /// Maths markers found (including operator-digit patterns).
    pub math: u32,
    /// Code markers found.
    pub code: u32,
    /// Fenced code blocks (```) opened.
    pub code_blocks: u32,
    /// Multi-step markers found (including question marks beyond the first and half the commas
    /// beyond the first: a list of sub-asks).
    pub steps: u32,
    /// Long-output markers found.
    pub long_output: u32,
    /// Markers of asks a small model cannot meet however short (proofs, implementations).
    pub demanding: u32,
    /// Simple-ask markers found.
    pub simple: u32,
    /// Messages in the conversation.
    pub messages: usize,
    /// Requested `max_tokens`.
    pub max_tokens: Option<u32>,
}

/// Feature counts of one region of the prompt.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    reasoning: u32,
    math: u32,
    code: u32,
    steps: u32,
    long_output: u32,
    demanding: u32,
    simple: u32,
    transform: u32,
}

impl Tally {
    /// Markers of a hard ask in this region (long output and steps excepted: "summarise this
    /// report:" names the material, it does not ask for a report).
    fn hard(&self) -> bool {
        self.reasoning + self.math + self.code + self.demanding > 0
    }
}

/// Figures in the ask from which it counts as a maths marker.
const NUMBERS_FOR_MATH: u32 = 5;

/// How far into the prompt a transform ask's own words may run before its material.
const HEAD_MAX: usize = 200;

impl HeuristicComplexity {
    /// The scorer with default weights.
    pub fn new() -> Self {
        Self::with_weights(HeuristicWeights::default())
    }

    /// The scorer with the given weights.
    pub fn with_weights(weights: HeuristicWeights) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut features = Vec::new();
        for (feature, words) in MARKERS {
            // Matching ignores ASCII case only, so a marker starting with a letter outside
            // ASCII also gets its capitalised form: sentences start with "Докажи", "Übersetze".
            let capitalised = words.iter().filter_map(|w| {
                let mut chars = w.chars();
                let first = chars.next()?;
                (!first.is_ascii() && first.is_lowercase())
                    .then(|| first.to_uppercase().chain(chars).collect::<String>())
            });
            for w in words.iter().map(|w| (*w).to_string()).chain(capitalised) {
                // Overlapping matching reports every pattern, so a duplicate would count twice
                // for its feature; the same word may mark two features ("translate").
                let dup = patterns
                    .iter()
                    .zip(&features)
                    .any(|(p, f)| f == feature && p.eq_ignore_ascii_case(&w));
                if !dup {
                    patterns.push(w);
                    features.push(*feature);
                }
            }
        }
        let whole = patterns
            .iter()
            .map(|p| WHOLE_WORDS.iter().any(|w| w.eq_ignore_ascii_case(p)))
            .collect();
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
            whole,
            weights,
        }
    }

    /// Counts the features of a request.
    pub fn features(&self, request: &ChatRequest) -> ComplexityFeatures {
        let text = request.last_user_text();
        let bytes = text.as_bytes();
        // Fenced code blocks, as byte ranges (an unclosed fence runs to the end).
        let fences: Vec<usize> = text.match_indices("```").map(|(i, _)| i).collect();
        let blocks: Vec<(usize, usize)> = fences
            .chunks(2)
            .filter_map(|c| Some((*c.first()?, c.get(1).map_or(bytes.len(), |&e| e + 3))))
            .collect();
        // Blocks are sorted and disjoint: a binary search keeps the check logarithmic even
        // for a prompt made of thousands of fences.
        let in_block = |i: usize| {
            let after = blocks.partition_point(|&(s, _)| s <= i);
            after
                .checked_sub(1)
                .and_then(|k| blocks.get(k))
                .is_some_and(|&(_, e)| i < e)
        };
        // The head: up to the first ':', '?' or newline near the start. If it is a transform
        // ask with no hard marker of its own, what follows is material to transform.
        let head_end = bytes
            .iter()
            .take(HEAD_MAX)
            .position(|b| matches!(b, b':' | b'?' | b'\n'))
            .map_or(bytes.len(), |i| i + 1);
        let mut head = Tally::default();
        let mut rest = Tally::default();
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
            if self.whole.get(pat).copied().unwrap_or(false)
                && bytes
                    .get(m.end())
                    .is_some_and(|b| b.is_ascii_alphanumeric())
            {
                continue;
            }
            if in_block(m.start()) {
                continue;
            }
            let t = if m.start() < head_end {
                &mut head
            } else {
                &mut rest
            };
            match feature {
                Feature::Reasoning => t.reasoning += 1,
                Feature::Math => t.math += 1,
                Feature::Code => t.code += 1,
                Feature::Steps => t.steps += 1,
                Feature::LongOutput => t.long_output += 1,
                Feature::Simple => t.simple += 1,
                Feature::Demanding => t.demanding += 1,
                Feature::Transform => t.transform += 1,
                Feature::WordCount => match number_before(bytes, m.start()) {
                    Some(n) if n >= 300 => t.long_output += 1,
                    Some(n) if n > 0 && n <= 100 => t.simple += 1,
                    _ => {}
                },
            }
        }
        let pasted = head.transform > 0 && !head.hard() && head_end < bytes.len();
        // Arithmetic between digits ("3 * 4", "2x+1=5"), numbers, extra questions and list
        // commas, counted bytewise outside code blocks and pasted material.
        let counted = if pasted { head_end } else { bytes.len() };
        let mut questions = 0u32;
        let mut commas = 0u32;
        let mut numbers = 0u32;
        let mut last_digit = usize::MAX;
        for (i, &b) in bytes.iter().enumerate().take(counted) {
            if in_block(i) {
                continue;
            }
            let t = if i < head_end { &mut head } else { &mut rest };
            match b {
                b'?' => questions += 1,
                b',' => commas += 1,
                // The last byte of a full-width comma or an ideographic comma.
                0x8C if i >= 2 && bytes.get(i - 2..i) == Some(&[0xEF, 0xBC][..]) => commas += 1,
                0x81 if i >= 2 && bytes.get(i - 2..i) == Some(&[0xE3, 0x80][..]) => commas += 1,
                b'0'..=b'9' => {
                    // A figure starts after a space or bracket: "12/05/2024", "9:30" and
                    // "3.14" are one figure each.
                    let joined = |p: &u8| p.is_ascii_alphanumeric() || b"/:.-".contains(p);
                    if i == 0 || bytes.get(i - 1).is_some_and(|p| !joined(p)) {
                        numbers += 1;
                    }
                    last_digit = i;
                }
                b'=' | b'+' | b'*' | b'^' | b'<' | b'>'
                    if last_digit != usize::MAX && i - last_digit <= 2 =>
                {
                    t.math += 1;
                    last_digit = usize::MAX;
                }
                // Division only with spaces ("3 / 4"): "12/05/2024" is a date.
                b'/' if last_digit != usize::MAX
                    && i - last_digit == 2
                    && bytes.get(i - 1) == Some(&b' ')
                    && bytes.get(i + 1) == Some(&b' ') =>
                {
                    t.math += 1;
                    last_digit = usize::MAX;
                }
                _ => {}
            }
        }
        let mut total = head;
        if !pasted {
            total.reasoning += rest.reasoning;
            total.math += rest.math;
            total.code += rest.code;
            total.steps += rest.steps;
            total.long_output += rest.long_output;
            total.demanding += rest.demanding;
            total.simple += rest.simple;
        }
        let pasted_bytes = if pasted {
            bytes.len().saturating_sub(head_end)
        } else {
            0
        };
        ComplexityFeatures {
            bytes: bytes.len(),
            pasted_bytes,
            reasoning: total.reasoning,
            // Many figures in the ask make it a word problem or a table to analyse.
            math: total.math + u32::from(numbers >= NUMBERS_FOR_MATH),
            code: total.code,
            code_blocks: u32::try_from(blocks.len()).unwrap_or(u32::MAX),
            steps: total.steps + questions.saturating_sub(1) + commas.saturating_sub(1).div_ceil(2),
            long_output: total.long_output,
            demanding: total.demanding,
            simple: total.simple,
            messages: request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .count(),
            max_tokens: request.max_tokens,
        }
    }

    /// The score for counted features.
    pub fn score_features(&self, f: &ComplexityFeatures) -> f32 {
        let w = &self.weights;
        let sat = |n: u32, k: f32| (n as f32 / k).min(1.0);
        let length = 1.0 - (-(f.bytes.saturating_sub(f.pasted_bytes / 2) as f32) / 1500.0).exp();
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
            + w.demanding * sat(f.demanding, 1.0)
            + w.depth * depth
            + w.max_tokens * max_tokens;
        // Simple-ask markers only discount short prompts without code or maths: "what is" at
        // the head of a long technical question, or "translate this C++ into Rust", is not
        // easy.
        let simple = if f.simple > 0 && f.code == 0 && f.math == 0 && f.code_blocks == 0 {
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

    #[test]
    fn short_proofs_and_implementations_score_as_hard_in_any_language() {
        for p in [
            "Prove that the square root of 2 is irrational.",
            "Implement a red-black tree in Java.",
            "Докажи, что простых чисел бесконечно много.",
            "证明根号2是无理数。",
            "スタックを実装してください。",
        ] {
            assert!(score(p) >= 0.45, "{}: {p}", score(p));
        }
    }

    #[test]
    fn whole_word_markers_do_not_match_longer_words() {
        let h = HeuristicComplexity::new();
        let f = h.features(&ChatRequest::user(
            "Please proofread my note about a rusty bike",
        ));
        assert_eq!((f.demanding, f.code), (0, 0));
        let f = h.features(&ChatRequest::user("a proof in rust"));
        assert_eq!((f.demanding, f.code), (1, 1));
    }

    #[test]
    fn capitalised_markers_outside_ascii_are_found() {
        let h = HeuristicComplexity::new();
        assert_eq!(h.features(&ChatRequest::user("Объясни это")).reasoning, 1);
        assert_eq!(h.features(&ChatRequest::user("объясни это")).reasoning, 1);
    }

    #[test]
    fn pasted_material_after_a_transform_ask_is_not_instructions() {
        let h = HeuristicComplexity::new();
        let pasted = "Fix the typos: I explain why the algorithm and the report is detailed, \
                      then we compare the code.";
        let f = h.features(&ChatRequest::user(pasted));
        assert_eq!((f.reasoning, f.code, f.long_output), (0, 0, 0));
        assert!(f.pasted_bytes > 0);
        // Without a transform ask, the same text is an ask and counts in full.
        let asked = pasted.replace("Fix the typos:", "Note:");
        let f = h.features(&ChatRequest::user(asked));
        assert!(f.reasoning >= 2 && f.code >= 2, "{f:?}");
        // A transform ask with a hard marker of its own is not a plain transform.
        let f = h.features(&ChatRequest::user(
            "Translate this Python into Rust: explain why",
        ));
        assert_eq!(f.pasted_bytes, 0);
        assert!(f.reasoning >= 1);
    }

    #[test]
    fn code_blocks_are_material_and_never_a_simple_ask() {
        let h = HeuristicComplexity::new();
        let f = h.features(&ChatRequest::user(
            "What language is this?\n```\nimport os\nfn main() { debug(); }\n```",
        ));
        assert_eq!((f.code, f.code_blocks), (0, 1));
        let with_block = score("Translate this: ```\nlet x = 1;\n```");
        let without = score("Translate this: let x be one");
        assert!(with_block > without, "{with_block} vs {without}");
        // What is asked about the block, outside it, counts.
        let f = h.features(&ChatRequest::user("```\nx = 1\n```\nWhy does this crash?"));
        assert!(f.reasoning >= 1 && f.code >= 1, "{f:?}");
    }

    #[test]
    fn lists_of_sub_asks_and_many_figures_count() {
        let h = HeuristicComplexity::new();
        let f = h.features(&ChatRequest::user(
            "Cover causes, symptoms, tests, and treatment",
        ));
        assert_eq!(f.steps, 1);
        let f = h.features(&ChatRequest::user(
            "Cover causes, symptoms, tests, costs, and treatment",
        ));
        assert_eq!(f.steps, 2);
        let f = h.features(&ChatRequest::user("sales 120 95 130 80 135"));
        assert_eq!(f.math, 1);
        let f = h.features(&ChatRequest::user("sales 120 95 130 80"));
        assert_eq!(f.math, 0);
    }

    #[test]
    fn dates_and_times_are_one_figure_each() {
        let h = HeuristicComplexity::new();
        let f = h.features(&ChatRequest::user(
            "remind me on 12/05/2024 at 10:30 and 3.5",
        ));
        assert_eq!(f.math, 0);
    }

    #[test]
    fn everyday_uses_of_hard_words_stay_easy() {
        for p in [
            "Can you show that photo again?",
            "Implement this tip in my routine: drink more water - how?",
            "Hey, how's it going? I just got back from Paris, Rome, and Berlin, it was amazing!",
            "What's a good design for a birthday card?",
            "Please proofread my cover note",
        ] {
            assert!(score(p) < 0.45, "{}: {p}", score(p));
        }
    }

    #[test]
    fn code_block_lookup_handles_many_fences() {
        let h = HeuristicComplexity::new();
        let text = format!("{}why", "```x```".repeat(5000));
        let f = h.features(&ChatRequest::user(text));
        assert_eq!((f.code_blocks, f.reasoning), (5000, 1));
        let f = h.features(&ChatRequest::user("```a``` b ```why"));
        assert_eq!((f.code_blocks, f.reasoning), (2, 0));
    }
}
