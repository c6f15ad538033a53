//! The word tokenisation Skip-Thought's vocabulary was built with: sentences split on `.`, `!`
//! and `?` (abbreviations kept), then each sentence split into Penn-Treebank words with the rules
//! of NLTK's `TreebankWordTokenizer` as `word_tokenize` applies them.

use std::sync::OnceLock;

use regex::Regex;

/// Words that end in `.` without ending a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "inc", "ltd", "co",
    "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "approx", "dept", "fig", "gen", "gov", "lt", "col", "capt", "sgt", "rev", "ave",
];

/// Whether a whitespace-delimited word ends a sentence (see the module docs).
fn ends_sentence(word: &str) -> bool {
    let w = word.trim_end_matches(['"', '\'', ')', ']', '}']);
    if w.ends_with('!') || w.ends_with('?') {
        return true;
    }
    if !w.ends_with('.') || w.ends_with("..") {
        return false;
    }
    let core = &w[..w.len() - 1];
    let core = core.trim_start_matches(['"', '\'', '(', '[', '{', '`']);
    if core.is_empty() || core.contains('.') {
        return false;
    }
    let mut chars = core.chars();
    if let (Some(c), None) = (chars.next(), chars.next())
        && c.is_alphabetic()
    {
        return false;
    }
    !ABBREVIATIONS.contains(&core.to_lowercase().as_str())
}

/// Splits a text into sentences (whitespace collapsed), see the module docs.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
        if ends_sentence(word) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Penn-Treebank rules (NLTK `TreebankWordTokenizer`), as `(pattern, replacement)`.
fn treebank_rules() -> &'static [(Regex, &'static str)] {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules: &[(&str, &str)] = &[
            // starting quotes
            (r#"^""#, "``"),
            (r"(``)", " ${1} "),
            (r#"([ (\[{<])""#, "${1} `` "),
            // punctuation
            (r"([:,])([^\d])", " ${1} ${2}"),
            (r"([:,])$", " ${1} "),
            (r"\.\.\.", " ... "),
            (r"[;@#$%&]", " ${0} "),
            (r#"([^\.])(\.)([\]\)}>"']*)\s*$"#, "${1} ${2}${3} "),
            (r"[?!]", " ${0} "),
            (r"([^'])' ", "${1} ' "),
            // parentheses, brackets
            (r"[\]\[\(\)\{\}<>]", " ${0} "),
            (r"--", " -- "),
        ];
        rules
            .iter()
            .filter_map(|(p, r)| Regex::new(p).ok().map(|re| (re, *r)))
            .collect()
    })
}

/// Rules applied after padding the sentence with spaces (ending quotes, clitics,
/// contractions).
fn treebank_late_rules() -> &'static [(Regex, &'static str)] {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rules: &[(&str, &str)] = &[
            (r#"""#, " '' "),
            (r"(\S)('')", "${1} ${2} "),
            (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "${1} ${2} "),
            (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "${1} ${2} "),
            (r"(?i)\b(can)(not)\b", " ${1} ${2} "),
            (r"(?i)\b(d)('ye)\b", " ${1} ${2} "),
            (r"(?i)\b(gim)(me)\b", " ${1} ${2} "),
            (r"(?i)\b(gon)(na)\b", " ${1} ${2} "),
            (r"(?i)\b(got)(ta)\b", " ${1} ${2} "),
            (r"(?i)\b(lem)(me)\b", " ${1} ${2} "),
            (r"(?i)\b(mor)('n)\b", " ${1} ${2} "),
            (r"(?i)\b(wan)(na) ", " ${1} ${2} "),
            (r"(?i) ('t)(is)\b", " ${1} ${2} "),
            (r"(?i) ('t)(was)\b", " ${1} ${2} "),
        ];
        rules
            .iter()
            .filter_map(|(p, r)| Regex::new(p).ok().map(|re| (re, *r)))
            .collect()
    })
}

/// Penn-Treebank word tokens of one sentence.
fn treebank_words(sentence: &str) -> Vec<String> {
    let mut text = sentence.to_string();
    for (re, rep) in treebank_rules() {
        text = re.replace_all(&text, *rep).into_owned();
    }
    text = format!(" {text} ");
    for (re, rep) in treebank_late_rules() {
        text = re.replace_all(&text, *rep).into_owned();
    }
    text.split_whitespace().map(str::to_string).collect()
}

/// The Skip-Thought token sequence of a text: sentences split, each word-tokenised with
/// Penn-Treebank rules, all tokens joined. Case is kept. `"Don't stop."` →
/// `["Do", "n't", "stop", "."]`.
pub fn tokenize(text: &str) -> Vec<String> {
    split_sentences(text)
        .iter()
        .flat_map(|s| treebank_words(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn treebank_examples() {
        assert_eq!(tokenize("Don't stop."), ["Do", "n't", "stop", "."]);
        assert_eq!(
            tokenize("Is it sunny? Yes, it's warm."),
            [
                "Is", "it", "sunny", "?", "Yes", ",", "it", "'s", "warm", "."
            ]
        );
        assert_eq!(
            tokenize("I saw Mr. Smith. He left (quickly)..."),
            [
                "I", "saw", "Mr.", "Smith", ".", "He", "left", "(", "quickly", ")", "..."
            ]
        );
        assert_eq!(
            tokenize("\"Hello\" she said; I cannot go"),
            [
                "``", "Hello", "''", "she", "said", ";", "I", "can", "not", "go"
            ]
        );
        assert_eq!(tokenize("3,000 dogs: 2"), ["3,000", "dogs", ":", "2"]);
    }
}
