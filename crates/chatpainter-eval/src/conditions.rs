//! Text → generator conditions, encoded exactly as the run's embed stage encoded its data.
//!
//! A generator only makes sense with the vectors it was trained on, so [`RunEncoders::load`]
//! rebuilds the encoders from `<run>/embed/config.toml` (the resolved config the stage wrote) and
//! refuses to go on when their identities (name, width, weights sha256, text rules) differ from
//! the ones recorded in `<run>/embed/manifest.json`. Texts go through the embed stage's own
//! rules: [`normalize_whitespace`] for captions, [`turn_text`] per turn (empty turns dropped, as
//! the stage drops them) and [`dialogue_text`] for the non-recurrent whole-dialogue string.

use std::path::{Path, PathBuf};

use chatpainter_artifacts::Manifest;
use chatpainter_model::Variant;
use chatpainter_model::text::{
    EncoderIdentity, EncoderSettings, Encoders, TextEncoder, dialogue_text, normalize_whitespace,
    turn_text,
};

use crate::error::{EvalError, Result};
use crate::genapi::{Condition, DialogueCondition};

/// One dialogue turn as typed: question and answer (either may be empty).
pub type TurnPair = (String, String);

/// The run's text encoders, checked against what the embed stage recorded.
pub struct RunEncoders {
    encoders: Encoders,
    embed_dir: PathBuf,
}

fn identity_of(manifest: &Manifest, key: &str, path: &Path) -> Result<EncoderIdentity> {
    let value = manifest.summary.get(key).cloned().ok_or_else(|| {
        EvalError::Data(format!(
            "{}: summary has no `{key}`; rerun the embed stage",
            path.display()
        ))
    })?;
    serde_json::from_value(value).map_err(|e| {
        EvalError::Data(format!(
            "{}: summary `{key}` is not an encoder identity: {e}",
            path.display()
        ))
    })
}

fn describe(id: &EncoderIdentity) -> String {
    format!(
        "{} (dim {}, weights sha256 {}, text rules {})",
        id.name,
        id.dim,
        id.weights_sha256.as_deref().unwrap_or("none"),
        id.normalization
    )
}

impl RunEncoders {
    /// Loads the encoders of the embed stage in `embed_dir` and checks their identities.
    ///
    /// # Errors
    /// A missing or unreadable `config.toml` / `manifest.json` (named), encoder files that
    /// cannot be loaded, or an encoder whose identity differs from the recorded one.
    pub fn load(embed_dir: &Path) -> Result<Self> {
        let config_path = embed_dir.join("config.toml");
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            EvalError::Data(format!(
                "{}: cannot read the embed stage's config ({e}); has the embed stage run?",
                config_path.display()
            ))
        })?;
        let config: EncoderSettings = toml::from_str(&text)
            .map_err(|e| EvalError::Data(format!("{}: {e}", config_path.display())))?;
        let manifest = Manifest::load(embed_dir)?;
        let manifest_path = Manifest::path_in(embed_dir);
        let want_caption = identity_of(&manifest, "caption_encoder", &manifest_path)?;
        let want_dialogue = identity_of(&manifest, "dialogue_encoder", &manifest_path)?;
        let encoders = Encoders::load(&config)?;
        for (role, want, have) in [
            ("caption", &want_caption, encoders.caption.identity()),
            ("dialogue", &want_dialogue, encoders.dialogue.identity()),
        ] {
            if want != have {
                return Err(EvalError::Config(format!(
                    "{role} encoder differs from the one this run was trained with: \
                     {} records {} but {} now loads {}; the generator would get vectors it \
                     never saw. Restore the encoder (and its weights) the run used.",
                    manifest_path.display(),
                    describe(want),
                    config_path.display(),
                    describe(have)
                )));
            }
        }
        Ok(Self {
            encoders,
            embed_dir: embed_dir.to_path_buf(),
        })
    }

    /// Identity of the caption encoder.
    pub fn caption_identity(&self) -> &EncoderIdentity {
        self.encoders.caption.identity()
    }

    /// Identity of the dialogue encoder.
    pub fn dialogue_identity(&self) -> &EncoderIdentity {
        self.encoders.dialogue.identity()
    }

    fn encode(
        &self,
        encoder: &dyn TextEncoder,
        texts: &[String],
        what: &str,
    ) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batch = encoder.encode_batch(&refs).map_err(|e| match e {
            chatpainter_model::text::EmbedError::EmptyText { index } => {
                EvalError::Config(format!("{what} {} is empty", index + 1))
            }
            other => EvalError::Embed(other),
        })?;
        if !batch.truncated.is_empty() {
            tracing::warn!(
                what,
                truncated = batch.truncated.len(),
                "texts longer than the encoder's token limit were truncated (as the embed stage does)"
            );
        }
        Ok(batch.to_vecs())
    }

    /// The caption vector of `caption` (normalised as the embed stage does).
    pub fn caption(&self, caption: &str) -> Result<Vec<f32>> {
        let text = normalize_whitespace(caption);
        let mut v = self.encode(self.encoders.caption.as_ref(), &[text], "caption")?;
        v.pop()
            .ok_or_else(|| EvalError::Data("the caption encoder returned no vector".into()))
    }

    /// The condition for `caption` and the whole dialogue `turns`, as `variant` needs it.
    ///
    /// # Errors
    /// An empty caption; a dialogue variant with no non-empty turn.
    pub fn condition(
        &self,
        variant: Variant,
        caption: &str,
        turns: &[TurnPair],
    ) -> Result<Condition> {
        let mut all = self.per_turn_conditions(variant, caption, turns, false)?;
        all.pop()
            .ok_or_else(|| EvalError::Data("no condition was built".into()))
    }

    /// One condition per turn: condition `t` sees the caption and turns `1..=t` (empty turns
    /// are dropped first, as the embed stage drops them). With `per_turn == false` only the
    /// whole dialogue's condition is returned. A caption-only variant gets one condition.
    ///
    /// # Errors
    /// As [`RunEncoders::condition`].
    pub fn per_turn_conditions(
        &self,
        variant: Variant,
        caption: &str,
        turns: &[TurnPair],
        per_turn: bool,
    ) -> Result<Vec<Condition>> {
        let caption_vec = self.caption(caption)?;
        let kept: Vec<&TurnPair> = turns
            .iter()
            .filter(|(q, a)| !turn_text(q, a).is_empty())
            .collect();
        if variant != Variant::Stackgan && kept.is_empty() {
            return Err(EvalError::Config(format!(
                "the run's variant {} is conditioned on a dialogue: give at least one non-empty turn",
                variant.name()
            )));
        }
        let prefixes: Vec<usize> = if per_turn {
            (1..=kept.len()).collect()
        } else {
            vec![kept.len()]
        };
        let dialogue = self.encoders.dialogue.as_ref();
        let conditions = match variant {
            Variant::Stackgan => prefixes
                .iter()
                .map(|_| Condition {
                    caption: caption_vec.clone(),
                    dialogue: DialogueCondition::None,
                })
                .collect(),
            Variant::ChatpainterNonrecurrent => {
                let texts: Vec<String> = prefixes
                    .iter()
                    .map(|&t| {
                        let pairs: Vec<(&str, &str)> = kept[..t]
                            .iter()
                            .map(|(q, a)| (q.as_str(), a.as_str()))
                            .collect();
                        dialogue_text(&pairs)
                    })
                    .collect();
                self.encode(dialogue, &texts, "dialogue")?
                    .into_iter()
                    .map(|v| Condition {
                        caption: caption_vec.clone(),
                        dialogue: DialogueCondition::Whole(v),
                    })
                    .collect()
            }
            Variant::ChatpainterRecurrent => {
                let texts: Vec<String> = kept.iter().map(|(q, a)| turn_text(q, a)).collect();
                let vectors = self.encode(dialogue, &texts, "turn")?;
                prefixes
                    .iter()
                    .map(|&t| Condition {
                        caption: caption_vec.clone(),
                        dialogue: DialogueCondition::Turns(vectors[..t].to_vec()),
                    })
                    .collect()
            }
        };
        Ok(conditions)
    }

    /// Checks the encoder widths against a generator's input widths.
    pub fn check_widths(
        &self,
        variant: Variant,
        caption_dim: usize,
        dialogue_dim: usize,
    ) -> Result<()> {
        let c = self.caption_identity().dim;
        let d = self.dialogue_identity().dim;
        if c != caption_dim || (variant != Variant::Stackgan && d != dialogue_dim) {
            return Err(EvalError::Data(format!(
                "{}: encoders give caption width {c} and dialogue width {d}, but the generator \
                 expects {caption_dim} and {dialogue_dim}",
                self.embed_dir.display()
            )));
        }
        Ok(())
    }
}

/// Splits a typed turn `"Q? A."` at its first `?`: the question keeps the mark, the rest is the
/// answer. Without a `?` the whole text is one turn (taken as written, as the answer part, so
/// that [`turn_text`] does not add a question mark the user did not type).
pub fn parse_turn(text: &str) -> TurnPair {
    match text.find('?') {
        Some(i) => (text[..=i].to_string(), text[i + 1..].to_string()),
        None => (String::new(), text.to_string()),
    }
}

/// A VisDial-style dialogue file: `{"caption": …, "dialog": [{"question": …, "answer": …}]}`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct DialogueFile {
    #[serde(default)]
    pub caption: Option<String>,
    pub dialog: Vec<DialogueFileTurn>,
}

/// One turn of a [`DialogueFile`]; a missing or `null` answer is empty.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct DialogueFileTurn {
    pub question: String,
    #[serde(default)]
    pub answer: Option<String>,
}

impl DialogueFile {
    /// Reads and parses the file.
    ///
    /// # Errors
    /// IO errors and JSON errors naming the file (and serde's line/column).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            EvalError::Config(format!(
                "{}: not a VisDial-style dialogue ({{\"caption\": …, \"dialog\": [{{\"question\": …, \"answer\": …}}]}}): {e}",
                path.display()
            ))
        })
    }

    /// The turns as question/answer pairs.
    pub fn turns(&self) -> Vec<TurnPair> {
        self.dialog
            .iter()
            .map(|t| (t.question.clone(), t.answer.clone().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn typed_turns_split_at_the_first_question_mark() {
        let (q, a) = parse_turn("is it red? yes, very. why?");
        assert_eq!(turn_text(&q, &a), "is it red? yes, very. why?");
        assert_eq!(
            parse_turn("no question"),
            (String::new(), "no question".into())
        );
        assert_eq!(turn_text(&parse_turn("any dogs?").0, ""), "any dogs?");
    }

    #[test]
    fn dialogue_file_parses_null_answers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        std::fs::write(
            &p,
            r#"{"caption": "a cat", "dialog": [{"question": "is it black", "answer": "yes"}, {"question": "any dog", "answer": null}]}"#,
        )
        .unwrap();
        let f = DialogueFile::read(&p).unwrap();
        assert_eq!(f.caption.as_deref(), Some("a cat"));
        assert_eq!(f.turns()[1], ("any dog".to_string(), String::new()));
        std::fs::write(&p, r#"{"dialog": 3}"#).unwrap();
        let err = DialogueFile::read(&p).unwrap_err().to_string();
        assert!(err.contains("d.json"), "{err}");
    }
}
