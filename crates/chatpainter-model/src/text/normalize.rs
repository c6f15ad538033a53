//! How dialogue text is formed before it reaches an encoder (the paper leaves it open; these
//! rules fix it for every encoder).
//!
//! One VisDial turn becomes `"<question>? <answer>"` (VisDial stores questions without the
//! question mark); the non-recurrent dialogue string is the turns joined by one space, without
//! the caption. Every function here collapses whitespace so that the same dialogue always
//! yields the same bytes, which the embedding cache keys on.

/// Version tag of [`normalize_whitespace`]; part of every encoder identity so that a change
/// of the text rules invalidates cached embeddings.
pub const NORMALIZATION_VERSION: &str = "ws-collapse-v1";

/// Trims the text and replaces every run of Unicode whitespace by one ASCII space.
///
/// Case, punctuation and non-ASCII letters are kept: lower-casing is the encoder's business
/// (MiniLM's tokenizer lower-cases itself, the hashing encoder does it in its own rules).
pub fn normalize_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// One dialogue turn: `"<question>? <answer>"`.
///
/// A question that already ends with `?` does not get a second one. An empty answer gives
/// `"<question>?"` (no trailing space); an empty question gives just the answer.
pub fn turn_text(question: &str, answer: &str) -> String {
    let question = normalize_whitespace(question);
    let answer = normalize_whitespace(answer);
    let mut out = String::with_capacity(question.len() + answer.len() + 2);
    if !question.is_empty() {
        out.push_str(&question);
        if !question.ends_with('?') {
            out.push('?');
        }
    }
    if !answer.is_empty() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&answer);
    }
    out
}

/// The non-recurrent dialogue string: every turn's [`turn_text`], joined by one space.
///
/// Turns that come out empty (empty question and answer) are skipped so that they do not
/// leave double spaces. The caption is deliberately not part of it: it is encoded on its own.
pub fn dialogue_text<Q: AsRef<str>, A: AsRef<str>>(turns: &[(Q, A)]) -> String {
    let mut out = String::new();
    for (question, answer) in turns {
        let turn = turn_text(question.as_ref(), answer.as_ref());
        if turn.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&turn);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_collapsed_and_trimmed() {
        assert_eq!(normalize_whitespace("  a\t b\n\nc  "), "a b c");
        assert_eq!(normalize_whitespace("\u{00a0}é\u{2003}x"), "é x");
        assert_eq!(normalize_whitespace(" \n\t "), "");
    }

    #[test]
    fn turn_adds_one_question_mark() {
        assert_eq!(turn_text("is it sunny", "yes"), "is it sunny? yes");
        assert_eq!(turn_text("is it sunny?", "yes"), "is it sunny? yes");
        assert_eq!(
            turn_text("  is it   sunny ", " no,  cloudy "),
            "is it sunny? no, cloudy"
        );
        assert_eq!(turn_text("any people", ""), "any people?");
        assert_eq!(turn_text("", "yes"), "yes");
        assert_eq!(turn_text("", ""), "");
    }

    #[test]
    fn dialogue_joins_turns_with_one_space() {
        let turns = [
            ("how many dogs", "2"),
            ("are they brown?", "yes, both"),
            ("", ""),
        ];
        assert_eq!(
            dialogue_text(&turns),
            "how many dogs? 2 are they brown? yes, both"
        );
        let none: [(&str, &str); 0] = [];
        assert_eq!(dialogue_text(&none), "");
        let owned = vec![(String::from("q"), String::from("a"))];
        assert_eq!(dialogue_text(&owned), "q? a");
    }
}
