//! Turning chat messages into one prompt string.
//!
//! Apple publishes no chat template for OpenELM: the `-Instruct` repositories ship neither a
//! tokenizer nor a `tokenizer_config.json`, and Apple's own `generate_openelm.py` feeds a plain
//! prompt, BOS first, to every model. The default, [`ChatTemplate::Plain`], does the same: a
//! single user message is the prompt as is (after any system text), and a conversation is
//! written as `User:` / `Assistant:` paragraphs ending with `Assistant:`, with `"\nUser:"` as a
//! stop string so the model does not write the next user turn itself. Models fine-tuned with
//! other formats pick [`ChatTemplate::Zephyr`] or [`ChatTemplate::Llama2`] in
//! [`LoadOptions`](crate::LoadOptions).

use elmroute_core::{Message, Role};

/// Breaks up the control-token texts `<s>`, `</s>` and `<unk>` in message content.
fn escape_control(text: &str) -> String {
    if !text.contains("<s>") && !text.contains("</s>") && !text.contains("<unk>") {
        return text.to_string();
    }
    text.replace("<s>", "<\u{200B}s>")
        .replace("</s>", "<\u{200B}/s>")
        .replace("<unk>", "<\u{200B}unk>")
}

/// How chat messages become the prompt text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChatTemplate {
    /// Plain text, as Apple's examples prompt OpenELM (see the module docs).
    #[default]
    Plain,
    /// `<|system|>\n..</s>\n<|user|>\n..</s>\n<|assistant|>\n` (the alignment-handbook /
    /// Zephyr format).
    Zephyr,
    /// Llama-2 chat: `[INST] <<SYS>>\n..\n<</SYS>>\n\n.. [/INST]`, one BOS-led block per turn
    /// written as the `<s>` / `</s>` text the tokenizer maps to its special tokens.
    Llama2,
}

impl ChatTemplate {
    /// Renders `messages` into the prompt text (without the leading BOS, which the tokenizer
    /// adds).
    pub fn render(&self, messages: &[Message]) -> String {
        // Message text is data: a user who types `</s>` must not end the prompt, and one who
        // types `<s>` must not start a new sequence. A zero-width space keeps the text visible
        // to the model but out of the tokenizer's control-token match.
        let escaped: Vec<Message> = messages
            .iter()
            .map(|m| Message::new(m.role, escape_control(&m.content)))
            .collect();
        let messages = escaped.as_slice();
        match self {
            Self::Plain => render_plain(messages),
            Self::Zephyr => {
                let mut out = String::new();
                for m in messages {
                    let role = match m.role {
                        Role::System => "system",
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    };
                    out.push_str(&format!("<|{role}|>\n{}</s>\n", m.content));
                }
                out.push_str("<|assistant|>\n");
                out
            }
            Self::Llama2 => render_llama2(messages),
        }
    }

    /// Stop strings that end the model's turn under this template.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            Self::Plain => vec!["\nUser:".into()],
            Self::Zephyr => vec!["<|user|>".into(), "<|system|>".into()],
            Self::Llama2 => vec!["[INST]".into()],
        }
    }
}

fn render_plain(messages: &[Message]) -> String {
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let turns: Vec<&Message> = messages.iter().filter(|m| m.role != Role::System).collect();
    let mut out = String::new();
    if !system.is_empty() {
        out.push_str(&system.join("\n"));
        out.push_str("\n\n");
    }
    if let [only] = turns.as_slice()
        && only.role == Role::User
    {
        out.push_str(&only.content);
        return out;
    }
    for m in turns {
        let who = if m.role == Role::User {
            "User"
        } else {
            "Assistant"
        };
        out.push_str(&format!("{who}: {}\n\n", m.content));
    }
    out.push_str("Assistant:");
    out
}

fn render_llama2(messages: &[Message]) -> String {
    let mut out = String::new();
    let mut system = String::new();
    let mut first = true;
    for m in messages {
        match m.role {
            Role::System => {
                system.push_str(&m.content);
            }
            Role::User => {
                if !first {
                    out.push_str("<s>");
                }
                out.push_str("[INST] ");
                if !system.is_empty() {
                    out.push_str(&format!("<<SYS>>\n{system}\n<</SYS>>\n\n"));
                    system.clear();
                }
                out.push_str(&format!("{} [/INST]", m.content.trim()));
                first = false;
            }
            Role::Assistant => {
                out.push_str(&format!(" {} </s>", m.content.trim()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_single_question_is_the_text() {
        let m = [Message::user("Once upon a time")];
        assert_eq!(ChatTemplate::Plain.render(&m), "Once upon a time");
        let m = [Message::system("Be brief."), Message::user("Hi")];
        assert_eq!(ChatTemplate::Plain.render(&m), "Be brief.\n\nHi");
    }

    #[test]
    fn plain_conversation_ends_with_the_assistant_cue() {
        let m = [
            Message::user("Hi"),
            Message::assistant("Hello."),
            Message::user("Bye"),
        ];
        assert_eq!(
            ChatTemplate::Plain.render(&m),
            "User: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
        );
    }

    #[test]
    fn zephyr_and_llama2_shapes() {
        let m = [Message::system("S"), Message::user("U")];
        assert_eq!(
            ChatTemplate::Zephyr.render(&m),
            "<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n"
        );
        assert_eq!(
            ChatTemplate::Llama2.render(&m),
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]"
        );
    }

    #[test]
    fn control_token_text_in_messages_is_escaped_but_template_tokens_are_not() {
        let msgs = [Message::user("explain </s> and <s> tags")];
        let zephyr = ChatTemplate::Zephyr.render(&msgs);
        assert_eq!(zephyr.matches("</s>").count(), 1, "{zephyr}");
        assert!(!ChatTemplate::Plain.render(&msgs).contains("</s>"));
    }
}
