//! The networks a training run holds, behind one trait ([`StageGenerator`]) so both stages share
//! the loop: Stage-I's G side ([`Stage1Generator`]: Stage-I G plus, in the recurrent variant, the
//! dialogue BiLSTM, which learns through the CA from the G loss and the KL term, so it shares
//! G's optimiser) with `Stage1D`, and Stage-II's ([`Stage2Generator`]: Stage-II G around the
//! frozen Stage-I G, and the frozen BiLSTM copied from Stage-I, paper §4.2) with `Stage2D`. Also
//! the CA input `[caption ‖ dialogue]`.

use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use chatpainter_nn::{
    CaNet, CaNoise, DialogueEncoder, Discriminator, GenOutput, ReferenceLayout, Stage1D, Stage1G,
    Stage2D, Stage2G, weights_init,
};

use crate::ModelError;
use crate::network::{ResolvedNetwork, Variant};

/// The G side of one stage: what G's optimiser updates (frozen parts inside are not), and how it
/// turns a batch's conditions and noise into images.
pub trait StageGenerator: Module + Sized {
    /// The discriminator trained against it.
    type D: Module + Discriminator + ReferenceLayout;
    /// The stage's name, `stage1` or `stage2` (log lines, progress, file names).
    const STAGE: &'static str;
    /// CA noise draws per image in one forward (Stage-II also samples the inner Stage-I CA).
    const CA_DRAWS: usize;
    /// This stage's CA (diagnostics read its weights).
    fn ca_net(&self) -> &CaNet;
    /// Restores invariants a loaded record may not carry (Stage-II: the frozen parts).
    fn after_load(self) -> Self {
        self
    }

    /// G forward with explicit noise and one eps tensor per CA draw (all from checkpointed RNGs).
    ///
    /// # Shapes
    /// captions `[B, caption_dim]`, noise `[B, z_dim]`, each eps `[B, cond_dim]` → fake
    /// `[B, 3, S, S]` (`stage1_img` `[B, 3, 64, 64]` in Stage-II)
    ///
    /// # Errors
    /// As [`ca_input`].
    fn generate(
        &self,
        captions: Tensor<2>,
        dialogue: &DialogueInput,
        noise: Tensor<2>,
        eps: Vec<Tensor<2>>,
    ) -> Result<GenOutput, ModelError>;
}

fn take_eps(eps: Vec<Tensor<2>>, n: usize) -> Result<Vec<CaNoise>, ModelError> {
    if eps.len() != n {
        return Err(ModelError::Internal(format!(
            "{} CA noise tensors, expected {n}",
            eps.len()
        )));
    }
    Ok(eps.into_iter().map(CaNoise::given).collect())
}

/// The CA input `[caption ‖ dialogue]`: the whole-dialogue vector, or the BiLSTM summary of the
/// turns.
///
/// # Shapes
/// captions `[B, caption_dim]` → `[B, text_dim]`
///
/// # Errors
/// [`ModelError::Nn`] for bad turn counts; [`ModelError::Internal`] when the variant's inputs
/// and networks do not match.
pub fn ca_input(
    captions: Tensor<2>,
    dialogue: &DialogueInput,
    encoder: Option<&DialogueEncoder>,
) -> Result<Tensor<2>, ModelError> {
    match (dialogue, encoder) {
        (DialogueInput::None, None) => Ok(captions),
        (DialogueInput::Whole(d), None) => Ok(Tensor::cat(vec![captions, d.clone()], 1)),
        (DialogueInput::Turns(t, lengths), Some(enc)) => {
            let summary = enc.forward(t.clone(), lengths)?;
            Ok(Tensor::cat(vec![captions, summary], 1))
        }
        _ => Err(ModelError::Internal(
            "dialogue input does not match the generator's variant".into(),
        )),
    }
}

/// Everything the generator optimiser updates.
#[derive(Module, Debug)]
pub struct Stage1Generator {
    /// `STAGE1_G` (its CA input is `caption_dim + dialogue summary width`).
    pub g: Stage1G,
    /// The recurrent variant's BiLSTM; `None` otherwise.
    pub dialogue: Option<DialogueEncoder>,
}

/// The dialogue part of one batch, as tensors.
#[derive(Debug, Clone)]
pub enum DialogueInput {
    None,
    /// `[B, dialogue_dim]`
    Whole(Tensor<2>),
    /// `[B, T, turn_dim]` zero-padded, with the present turn counts.
    Turns(Tensor<3>, Vec<usize>),
}

impl Stage1Generator {
    /// Builds both networks with the reference initialisation, drawn from the device RNG seeded
    /// with `seed` (under a process-wide lock: the device RNG is global).
    pub fn init(
        net: &ResolvedNetwork,
        variant: Variant,
        device: &Device,
        seed: u64,
    ) -> (Self, Stage1D) {
        let _guard = init_lock();
        device.seed(seed);
        let cfg = net.stackgan(variant);
        let g = draw_lazy_params(weights_init(cfg.stage1_g().init(device)));
        let dialogue = cfg
            .dialogue_encoder()
            .map(|c| draw_lazy_params(c.init(device)));
        let d = draw_lazy_params(weights_init(cfg.stage1_d().init(device)));
        (Self { g, dialogue }, d)
    }

    /// G forward with explicit noise and CA eps.
    ///
    /// # Shapes
    /// captions `[B, caption_dim]`, noise `[B, z_dim]`, eps `[B, cond_dim]` → fake `[B, 3, 64, 64]`
    ///
    /// # Errors
    /// As [`ca_input`].
    pub fn forward(
        &self,
        captions: Tensor<2>,
        dialogue: &DialogueInput,
        noise: Tensor<2>,
        eps: Tensor<2>,
    ) -> Result<GenOutput, ModelError> {
        self.generate(captions, dialogue, noise, vec![eps])
    }
}

impl StageGenerator for Stage1Generator {
    type D = Stage1D;
    const STAGE: &'static str = chatpainter_artifacts::Stage::Stage1.name();
    const CA_DRAWS: usize = 1;
    fn ca_net(&self) -> &CaNet {
        &self.g.ca_net
    }
    fn generate(
        &self,
        captions: Tensor<2>,
        dialogue: &DialogueInput,
        noise: Tensor<2>,
        eps: Vec<Tensor<2>>,
    ) -> Result<GenOutput, ModelError> {
        let text = ca_input(captions, dialogue, self.dialogue.as_ref())?;
        let [ca] = <[CaNoise; 1]>::try_from(take_eps(eps, 1)?)
            .map_err(|_| ModelError::Internal("CA noise count".into()))?;
        Ok(self.g.forward_with(text, noise, ca))
    }
}

/// Everything Stage-II holds on the G side; only Stage-II's own layers (its CA, encoder, joint,
/// residual and upsampling blocks) are trainable.
#[derive(Module, Debug)]
pub struct Stage2Generator {
    /// `STAGE2_G`, whose `stage1_g` is the frozen Stage-I G.
    pub g: Stage2G,
    /// The recurrent variant's BiLSTM from Stage-I, frozen; `None` otherwise.
    pub dialogue: Option<DialogueEncoder>,
}

impl Stage2Generator {
    /// Builds Stage-II around a trained Stage-I: fresh Stage-II layers with the reference
    /// initialisation (seeded as [`Stage1Generator::init`]), then the Stage-I G and BiLSTM moved
    /// in and frozen. `net` must carry its [`crate::network::Stage2Widths`].
    ///
    /// # Errors
    /// [`ModelError::Internal`] when `net` has no Stage-II widths.
    pub fn init(
        net: &ResolvedNetwork,
        variant: Variant,
        stage1: Stage1Generator,
        device: &Device,
        seed: u64,
    ) -> Result<(Self, Stage2D), ModelError> {
        let cfg = net.stackgan(variant);
        let missing = || ModelError::Internal("Stage-II widths missing".into());
        let (g_cfg, d_cfg) = (
            cfg.stage2_g().ok_or_else(missing)?,
            cfg.stage2_d().ok_or_else(missing)?,
        );
        let _guard = init_lock();
        device.seed(seed);
        let mut g = draw_lazy_params(weights_init(g_cfg.init(device)));
        let d = draw_lazy_params(weights_init(d_cfg.init(device)));
        g.stage1_g = stage1.g;
        Ok((
            Self {
                g,
                dialogue: stage1.dialogue,
            }
            .freeze_stage1(),
            d,
        ))
    }

    /// Marks the Stage-I parts as not trainable (again after loading a record, which may
    /// restore trainable flags).
    pub fn freeze_stage1(self) -> Self {
        Self {
            g: self.g.freeze_stage1(),
            dialogue: self.dialogue.map(Module::no_grad),
        }
    }
}

impl StageGenerator for Stage2Generator {
    type D = Stage2D;
    const STAGE: &'static str = chatpainter_artifacts::Stage::Stage2.name();
    const CA_DRAWS: usize = 2;

    fn ca_net(&self) -> &CaNet {
        &self.g.ca_net
    }

    fn after_load(self) -> Self {
        self.freeze_stage1()
    }

    fn generate(
        &self,
        captions: Tensor<2>,
        dialogue: &DialogueInput,
        noise: Tensor<2>,
        eps: Vec<Tensor<2>>,
    ) -> Result<GenOutput, ModelError> {
        let text = ca_input(captions, dialogue, self.dialogue.as_ref())?;
        let [ca1, ca2] = <[CaNoise; 2]>::try_from(take_eps(eps, 2)?)
            .map_err(|_| ModelError::Internal("CA noise count".into()))?;
        Ok(self.g.forward_with(text, noise, ca1, ca2))
    }
}

/// Draws every lazily initialised parameter now. Burn initialises parameters on first use, from
/// the process-global device RNG: left lazy, they would be drawn whenever the first forward
/// happens, after other threads may have drawn too, and a seed would not fix the weights.
fn draw_lazy_params<M: Module>(module: M) -> M {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// The device RNG is process-global: seeding and drawing initial weights hold a process-wide
/// lock, so runs initialising at the same time (tests, several runs in one process) still get
/// the weights their seed says.
fn init_lock() -> std::sync::MutexGuard<'static, ()> {
    static INIT_LOCK: Mutex<()> = Mutex::new(());
    INIT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
