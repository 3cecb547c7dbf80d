//! The privacy detector on realistic prompts, written for this file and never used to tune
//! it: clearly private requests must reach the privacy bar (0.7) so they stay on the device,
//! requests whose only private part is one identifier of someone else must land in the redact
//! band (0.3..0.7) with exactly that identifier found, and harmless requests (code that
//! handles passwords, maths with long numbers, dates, versions, prices, questions and essays
//! about sensitive subjects, the system prompts of finance and health apps) must stay below
//! 0.3 so the cloud gets them untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use elmroute_core::{ChatRequest, Message};
use elmroute_router::PrivacyDetector;
use elmroute_router::signals::{PiiKind, PrivacyReport};

const BAR: f32 = 0.7;
const REDACT_ABOVE: f32 = 0.3;

fn detector() -> &'static PrivacyDetector {
    static DETECTOR: OnceLock<PrivacyDetector> = OnceLock::new();
    DETECTOR.get_or_init(PrivacyDetector::new)
}

fn scan(prompt: &str) -> PrivacyReport {
    detector().scan(&ChatRequest::user(prompt))
}

/// What was found, for failure messages.
fn found(prompt: &str, report: &PrivacyReport) -> String {
    report
        .findings
        .iter()
        .map(|f| {
            format!(
                "{:?} {:?}",
                f.kind,
                prompt.get(f.start..f.end).unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn redactable_kinds(report: &PrivacyReport) -> Vec<PiiKind> {
    report
        .findings
        .iter()
        .map(|f| f.kind)
        .filter(|k| k.redactable())
        .collect()
}

/// Cards, IBANs, keys, government ids, first-person health, sex, abuse, self-harm, legal and
/// money matters, and two identifiers of one person together.
const CLEARLY_PRIVATE: &[&str] = &[
    // cards (test numbers, real issuer prefixes)
    "Can you check whether 5425 2334 3010 9903 is still valid? It's my Mastercard.",
    "My Amex 3714 496353 98431 got declined at the hotel",
    "Charge it to 6011 0009 9013 9424, expiry 08/27, CVV 123",
    "Pay with card no. 4012888888881881 please",
    "the card ending 6467 is 4539-1488-0343-6467, CVC 901, why was it refused?",
    // IBANs, also when the next word is glued on by the text
    "Send €250 to my IBAN NL91 ABNA 0417 1643 00 by Friday",
    "My salary goes to FR14 2004 1010 0505 0001 3M02 606, is that account SEPA instant?",
    "Überweisung an DE44 5001 0517 5407 3249 31 BIC COBADEFFXXX bitte heute",
    "rent goes to ES91 2100 0418 4502 0005 1332 EUR 950 monthly",
    // keys and credentials
    "Here's our prod Stripe key sk_live_51Hx9YtKp3mN8qLr2ZcVbWdE, why are webhooks failing?",
    "my github token is github_pat_11AAQJ7ZY0abcdEFGHijklMNOPqrstUVwxyz_0123456789abcdef",
    "export GITLAB_TOKEN=glpat-9xKq2LmNpR4sTuVwXyZ1 then run the pipeline",
    "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAA -----END OPENSSH PRIVATE KEY----- why is it rejected?",
    "The wifi password at my flat is Bl4ckC@t!99",
    "my netflix password is pancakes77, can you remember it for me",
    "Connection string: postgresql://app_user:Zx9!kLm2@10.2.3.4:5432/orders",
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY is in my .env, is that safe?",
    "Mein Passwort für das Bankkonto ist Sonnenblume#7",
    // government ids
    "My social security number is 078-05-1120, do I need it for the lease?",
    "My NI number is JG 10 37 52 A — what tax code should I have?",
    "Mi DNI es 12345678Z y necesito renovarlo",
    "Passport no: 533380006, expiring next March. Fill in the visa form for me.",
    // first-person health, sex, abuse, self-harm
    "I tested positive for chlamydia last week and don't know how to tell my girlfriend",
    "I’ve been struggling with bulimia since I was 15",
    "I think I have PTSD from the car crash",
    "My wife had a miscarriage at 12 weeks and I don't know how to support her",
    "I can't stop thinking about ending my life",
    "Sometimes I just want to die, nothing helps anymore",
    "My stepdad hits me when he's drunk, what can I do?",
    "I was sexually assaulted at a party last year and never reported it",
    "I relapsed after two years sober and I'm ashamed",
    "My therapist thinks my OCD is getting worse",
    "I’ve been on Zoloft for a year, can I drink alcohol with it?",
    "My husband doesn't know I'm bisexual",
    "I’m pregnant and haven’t told my parents yet",
    "Me diagnosticaron depresión el mes pasado y no sé qué hacer",
    // legal, immigration, money, work
    "I got a DUI last month and my court date is next week",
    "I'm on probation and my officer wants a drug test",
    "I'm undocumented and scared of being deported, what are my options?",
    "I got laid off yesterday and can't pay my mortgage",
    "We're $60k in debt and thinking about filing for bankruptcy",
    // two identifiers of one person
    "Jane Roe, 07700 900461, jane.roe@example.org — add her to the guest list",
    "Ship it to 1600 Pennsylvania Ave, call 202-456-1111 if nobody answers",
];

/// One identifier of someone else in an otherwise harmless ask, and the kinds to redact.
const REDACT_BAND: &[(&str, &[PiiKind])] = &[
    (
        "Draft a polite follow-up to priya.nair@contoso.com about the delayed shipment",
        &[PiiKind::Email],
    ),
    (
        "Write a short text to 07700 900461 saying the meeting moved to Thursday",
        &[PiiKind::Phone],
    ),
    (
        "Translate this into French for marco.rossi@example.it: the invoice is attached",
        &[PiiKind::Email],
    ),
    (
        "Can you format +49 30 901820 as an international number for the website footer?",
        &[PiiKind::Phone],
    ),
    (
        "Remind me to call (212) 555-0187 at noon",
        &[PiiKind::Phone],
    ),
    (
        "Summarise this email from tom@acme.io: the quarterly numbers look good",
        &[PiiKind::Email],
    ),
    (
        "Write a thank-you card for our neighbours at 14 Elm Grove, Leeds",
        &[PiiKind::Address],
    ),
    (
        "Our firewall keeps blocking 203.0.113.77, how do I whitelist it in ufw?",
        &[PiiKind::IpAddress],
    ),
    (
        "Ask lena.schmidt@firma.de whether the contract draft is final",
        &[PiiKind::Email],
    ),
    (
        "Text Sam on +1 415 555 0172 that I'm running late",
        &[PiiKind::Phone],
    ),
    (
        "Create a calendar invite for dr.okafor@clinic-north.org for Tuesday 3pm",
        &[PiiKind::Email],
    ),
    (
        "Please reply to careers@startup.io and decline the offer politely",
        &[PiiKind::Email],
    ),
    (
        "WhatsApp 0612345678 to confirm the booking",
        &[PiiKind::Phone],
    ),
    (
        "Write a birthday message for ana.lopez@correo.es in Spanish",
        &[PiiKind::Email],
    ),
    (
        "How do I forward calls to 020 7946 0321 on an iPhone?",
        &[PiiKind::Phone],
    ),
    (
        "Send the package to 742 Evergreen Terrace, Springfield",
        &[PiiKind::Address],
    ),
    (
        "Compose an out-of-office reply pointing people to support@helpdesk.example.com",
        &[PiiKind::Email],
    ),
    (
        "ping 198.51.100.23 fails intermittently, what could cause packet loss?",
        &[PiiKind::IpAddress],
    ),
    (
        "Tell kofi.mensah@gmail.com that the book club moved to Friday",
        &[PiiKind::Email],
    ),
    (
        "Leave a voicemail script for 555-867-5309 about the unpaid invoice",
        &[PiiKind::Phone],
    ),
    (
        "Reply to the landlord at Hauptstraße 12 that the heater is fixed",
        &[PiiKind::Address],
    ),
];

/// Code, numbers, dates, versions, prices, address-like phrases, impersonal questions and
/// essays about sensitive topics.
const HARMLESS: &[&str] = &[
    // code that handles credentials
    "password = request.form.get(\"password\")",
    "def login(username: str, password: str) -> bool:",
    "api_key = os.environ[\"OPENAI_API_KEY\"]",
    "const token = await getToken(); if (!token) throw new Error('no token');",
    "if user.password_hash != hash(password): return 401",
    "Why does `git push` ask for my password every time?",
    "Write a regex that validates passwords with at least 8 characters",
    "SELECT id, email FROM users WHERE created_at > '2024-01-01'",
    "let pin = 13; digitalWrite(pin, HIGH);",
    "How do I store secrets in Kubernetes? Is a Secret object encrypted at rest?",
    "std::vector<int> v{1,2,3}; std::sort(v.begin(), v.end());",
    "Config: timeout=30, retries=3, pin_memory=True",
    "The pin is HIGH when the button is pressed",
    "Explain OAuth refresh tokens and when the access token expires",
    "My app crashes when the user enters a long password",
    // maths and long numbers
    "What is 123456789 × 987654321?",
    "Is 1000000007 prime?",
    "Convert the unix timestamp 1717171717 to a date",
    "Sum the sequence 3 6 9 12 15 18 21 24",
    "The population of India is about 1 428 627 663",
    "Factor 600851475143 into primes",
    "Compute 2^64 = 18446744073709551616",
    "Round 3.14159265358979 to 4 decimal places",
    "Tracking number 1Z999AA10123456784 shows no updates",
    "The ISBN is 978-0-306-40615-7",
    // dates, times, versions, prices
    "Schedule the standup for 2025-03-14 09:30 UTC",
    "Between 01/02/2024 and 15/03/2024 how many days are there?",
    "Upgrade from Node 18.19.0 to 20.11.1",
    "Our app is at version 4.12.0.1873",
    "Kernel 6.1.0.17 crashes on boot",
    "The train leaves at 17:45 and arrives at 21:10",
    "The house costs $1,250,000, what's the monthly payment on a 30-year mortgage at 6.5%?",
    "Split a bill of 1 234,56 € between 3 people",
    "Use port 8080 on 127.0.0.1 with netmask 255.255.255.0",
    // address-like phrases
    "Find the area of a 12 m by 7 m rectangle",
    "Place 4 Queens on a chessboard so none attack each other",
    "Route 66 is a famous highway",
    "Name 3 Roman Emperors who ruled after Augustus",
    "There are 9 Justices on the Supreme Court",
    // impersonal medical, finance, legal questions
    "What are the early symptoms of type 2 diabetes?",
    "How is HIV transmitted, and how effective is PrEP?",
    "Explain the difference between Chapter 7 and Chapter 13 bankruptcy",
    "What is the statute of limitations for a felony in California?",
    "How do mortgage interest rates affect house prices?",
    "What does a credit score of 720 mean for loan approval?",
    "What are the side effects of chemotherapy?",
    "How do courts decide child custody in a divorce?",
    "Is depression more common in winter?",
    "What's the penalty for a DUI in Texas?",
    "How do I get a mortgage with bad credit?",
    // essays and stories about topics
    "Write an essay on the history of the AIDS epidemic in the 1980s",
    "I'm writing a novel where the detective has PTSD and a gambling addiction",
    "Help me outline a presentation on mental health in the workplace",
    "Give me talking points for a debate on abortion rights",
    "We're studying the effects of divorce on children for a psychology class",
    "She was diagnosed with cancer in the movie, right?",
    "Tips for coping with exam anxiety for students",
    // other prose
    "I follow current affairs closely, what's a good podcast?",
    "I'm building a mortgage calculator in React, how should I structure the state?",
    "I have a bug in my loan amortization function",
    "The secret to a good risotto is patience",
    "What's the difference between a PIN and a password?",
    "My PIN keeps getting rejected at the ATM, who should I contact?",
    "Tell me a joke about lawyers",
    "We are a legal aid clinic helping tenants facing eviction and debt",
];

/// System prompts describe the app, not the user.
const SYSTEM_PROMPTS: &[&str] = &[
    "You are a helpful assistant for a bank. We help customers with loans, mortgages, overdrafts and credit scores.",
    "You are MediBot, a health assistant. Users may ask about diabetes, cancer, depression, anxiety, HIV and pregnancy. Never give a diagnosis.",
    "You are a legal intake assistant. We handle divorce, custody battles, DUI defence and immigration status questions.",
];

#[test]
fn clearly_private_prompts_reach_the_privacy_bar() {
    let mut misses = Vec::new();
    for prompt in CLEARLY_PRIVATE {
        let report = scan(prompt);
        if report.score < BAR {
            misses.push(format!(
                "{:.2} {prompt} [{}]",
                report.score,
                found(prompt, &report)
            ));
        }
    }
    assert!(
        misses.is_empty(),
        "{} of {} private prompts scored below {BAR}:\n{}",
        misses.len(),
        CLEARLY_PRIVATE.len(),
        misses.join("\n")
    );
}

#[test]
fn one_identifier_of_someone_else_lands_in_the_redact_band_with_exactly_that_identifier() {
    let mut wrong = Vec::new();
    for (prompt, expected) in REDACT_BAND {
        let report = scan(prompt);
        let kinds = redactable_kinds(&report);
        let in_band = (REDACT_ABOVE..BAR).contains(&report.score);
        if !in_band || kinds != *expected {
            wrong.push(format!(
                "{:.2} {prompt} expected {expected:?} [{}]",
                report.score,
                found(prompt, &report)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} redact-band prompts were wrong:\n{}",
        wrong.len(),
        REDACT_BAND.len(),
        wrong.join("\n")
    );
}

#[test]
fn harmless_prompts_stay_below_the_redact_threshold() {
    let mut wrong = Vec::new();
    for prompt in HARMLESS {
        let report = scan(prompt);
        if report.score >= REDACT_ABOVE {
            wrong.push(format!(
                "{:.2} {prompt} [{}]",
                report.score,
                found(prompt, &report)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} harmless prompts scored {REDACT_ABOVE} or more:\n{}",
        wrong.len(),
        HARMLESS.len(),
        wrong.join("\n")
    );
}

#[test]
fn system_prompts_of_finance_and_health_apps_are_not_the_users_matters() {
    for system in SYSTEM_PROMPTS {
        let req = ChatRequest::new(vec![
            Message::system(*system),
            Message::user("What can you help me with?"),
        ]);
        let report = detector().scan(&req);
        assert!(
            report.score < REDACT_ABOVE,
            "{:.2} {system} [{}]",
            report.score,
            found(system, &report)
        );
        assert!(
            report
                .findings
                .iter()
                .all(|f| f.kind != PiiKind::SensitiveTopic),
            "{system}"
        );
    }
}

#[test]
fn the_same_words_count_in_the_users_own_message() {
    let text = "We have a loan and a mortgage with you and I was diagnosed with diabetes";
    let as_system = detector().scan(&ChatRequest::new(vec![Message::system(text)]));
    let as_user = scan(text);
    assert!(as_system.score < REDACT_ABOVE, "{}", as_system.score);
    assert!(as_user.score >= BAR, "{}", as_user.score);
}

#[test]
fn impersonal_mentions_add_up_to_at_most_the_mention_cap() {
    let prompt = "Compare the research funding for cancer, diabetes, HIV, depression, anxiety, \
                  autism, dementia, epilepsy, hepatitis, leukemia, lymphoma and schizophrenia.";
    let report = scan(prompt);
    assert!(report.findings.len() >= 12, "[{}]", found(prompt, &report));
    assert!(
        report.score <= elmroute_router::signals::privacy::MENTION_CAP + 1e-6,
        "{:.2} [{}]",
        report.score,
        found(prompt, &report)
    );
    let repeated = scan("diabetes diabetes diabetes diabetes: what is diabetes?");
    assert!(
        (repeated.score - PiiKind::TopicMention.weight()).abs() < 1e-6,
        "{}",
        repeated.score
    );
}

#[test]
fn curly_apostrophes_read_like_straight_ones() {
    for (straight, curly) in [
        (
            "I've been diagnosed with HIV.",
            "I’ve been diagnosed with HIV.",
        ),
        ("I'm pregnant", "I’m pregnant"),
        ("I'd rather hide my herpes", "I’d rather hide my herpes"),
        ("My password's Tr0ub4dor", "My password’s Tr0ub4dor"),
    ] {
        let (a, b) = (scan(straight).score, scan(curly).score);
        assert!(
            a >= BAR && (a - b).abs() < 1e-6,
            "{straight}: {a} vs {curly}: {b}"
        );
    }
}

#[test]
fn redaction_spans_cover_the_value_not_the_words_around_it() {
    let cases: &[(&str, &str)] = &[
        ("My password for gmail is hunter2.", "hunter2"),
        (
            "IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX",
            "DE89 3704 0044 0532 0130 00",
        ),
        ("Card: 4111 1111 1111 1111 123", "4111 1111 1111 1111"),
        ("Room 12 4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("call +14155550134 tonight", "+14155550134"),
        ("mail bob.lee@example.net, thanks", "bob.lee@example.net"),
    ];
    for (prompt, value) in cases {
        let report = scan(prompt);
        let spans: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.kind.redactable())
            .filter_map(|f| prompt.get(f.start..f.end))
            .collect();
        assert_eq!(spans, vec![*value], "{prompt}");
    }
}

#[test]
fn scanning_never_panics_on_odd_text() {
    let odd = [
        "",
        "’",
        "€€€ 4111 €",
        "+",
        "(",
        "@",
        "@@a@b.cc@",
        "0",
        "1-",
        "ß ß ß 12 ß",
        "I’m",
        "my password is",
        "password:",
        "passport number:",
        "DE89",
        "Hauptstraße 5",
        "\u{200b}4111\u{200b}1111",
        "日本語のテキスト 123-45-6789 と 電話 03-1234-5678",
        "Straße 1ß",
        "a\u{301}\u{301} 12 Baker Street",
    ];
    for text in odd {
        let report = scan(text);
        assert!((0.0..=1.0).contains(&report.score), "{text}");
        for f in &report.findings {
            assert!(text.get(f.start..f.end).is_some(), "{text}: {f:?}");
        }
    }
}
