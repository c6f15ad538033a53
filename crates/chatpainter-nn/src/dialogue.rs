//! The ChatPainter recurrent dialogue encoder: a one-layer bidirectional LSTM over per-turn
//! vectors whose summary is `[h_fwd after the last present turn ‖ h_bwd after turn 1]` (the paper
//! leaves the summary open; this is the choice every part of the project shares).
//!
//! Samples may have different turn counts (VisDial v1.0 test has 1–10 rounds). Padding turns sit
//! after the present ones and are masked step by step: a padded step keeps the previous state.
//! The forward direction therefore ends on the last present turn, and the backward direction
//! (which walks from the last slot to the first) stays at its zero initial state until it reaches
//! the last present turn, exactly what PyTorch's `pack_padded_sequence` computes. The state update
//! is a select (`mask_where`), not a multiply, so even non-finite padding cannot leak in.
//!
//! The weights use PyTorch's `nn.LSTM` layout and names (`weight_ih_l0 [4H, D]`, gate order
//! i, f, g, o, two biases) so that a torch LSTM state_dict maps one-to-one. They keep PyTorch's
//! default init U(±1/√H): the reference `weights_init` matches no LSTM class, so
//! [`crate::weights_init`] leaves them alone too.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};

use crate::NnError;

/// [`DialogueEncoder`] hyper-parameters.
#[derive(Config, Debug)]
pub struct DialogueEncoderConfig {
    /// Width of one turn vector (4800 for combine-skip Skip-Thought).
    pub turn_dim: usize,
    /// LSTM hidden size per direction (1024 in the paper).
    #[config(default = 1024)]
    pub hidden: usize,
}

impl DialogueEncoderConfig {
    /// Summary width: 2 × hidden.
    pub fn output_dim(&self) -> usize {
        2 * self.hidden
    }

    /// Builds the encoder with PyTorch's `nn.LSTM` default init, U(±1/√hidden) for every tensor.
    pub fn init(&self, device: &Device) -> DialogueEncoder {
        DialogueEncoder {
            lstm: BiLstm {
                fwd: LstmDirection::new(self.turn_dim, self.hidden, device),
                bwd: LstmDirection::new(self.turn_dim, self.hidden, device),
            },
        }
    }
}

/// One LSTM direction, PyTorch layout.
#[derive(Module, Debug)]
pub struct LstmDirection {
    /// `[4H, D]`, gate rows ordered i, f, g, o.
    pub weight_ih: Param<Tensor<2>>,
    /// `[4H, H]`
    pub weight_hh: Param<Tensor<2>>,
    /// `[4H]`
    pub bias_ih: Param<Tensor<1>>,
    /// `[4H]`
    pub bias_hh: Param<Tensor<1>>,
    pub hidden: usize,
}

impl LstmDirection {
    fn new(d_in: usize, hidden: usize, device: &Device) -> Self {
        let k = 1.0 / (hidden as f64).sqrt();
        let u = Distribution::Uniform(-k, k);
        Self {
            weight_ih: Param::from_tensor(Tensor::random([4 * hidden, d_in], u, device)),
            weight_hh: Param::from_tensor(Tensor::random([4 * hidden, hidden], u, device)),
            bias_ih: Param::from_tensor(Tensor::random([4 * hidden], u, device)),
            bias_hh: Param::from_tensor(Tensor::random([4 * hidden], u, device)),
            hidden,
        }
    }

    /// Runs the recurrence over `steps` (slot indices in processing order) and returns the final
    /// hidden state. Padded slots (`pad[b, t]` true) leave the state unchanged.
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]`, `pad`: `[B, T]`
    /// - output: `[B, H]`
    fn run(
        &self,
        x: Tensor<3>,
        pad: &Tensor<2, Bool>,
        steps: impl Iterator<Item = usize>,
    ) -> Tensor<2> {
        let [b, t, d] = x.dims();
        let h4 = 4 * self.hidden;
        // The state in the input's precision (bfloat16 under mixed precision).
        let (device, dtype) = (x.device(), x.dtype());
        // The input projection of every slot in one matmul; only the recurrent part is sequential.
        let xw = x
            .reshape([b * t, d])
            .matmul(self.weight_ih.val().transpose())
            .add(self.bias_ih.val().unsqueeze::<2>())
            .reshape([b, t, h4]);
        let w_hh_t = self.weight_hh.val().transpose();
        let b_hh = self.bias_hh.val().unsqueeze::<2>();
        let mut h = Tensor::<2>::zeros([b, self.hidden], (&device, dtype));
        let mut c = Tensor::<2>::zeros([b, self.hidden], (&device, dtype));
        for s in steps {
            let gates = xw.clone().narrow(1, s, 1).reshape([b, h4])
                + h.clone().matmul(w_hh_t.clone())
                + b_hh.clone();
            let mut g = gates.chunk(4, 1).into_iter();
            let (Some(gi), Some(gf), Some(gg), Some(go)) = (g.next(), g.next(), g.next(), g.next())
            else {
                unreachable!("chunk(4) of a 4H-wide tensor yields four parts")
            };
            let c_new = sigmoid(gf) * c.clone() + sigmoid(gi) * tanh(gg);
            let h_new = sigmoid(go) * tanh(c_new.clone());
            let keep = pad.clone().narrow(1, s, 1).expand([b, self.hidden]);
            c = c_new.mask_where(keep.clone(), c);
            h = h_new.mask_where(keep, h);
        }
        h
    }
}

/// PyTorch `nn.LSTM(D, H, num_layers=1, bidirectional=True, batch_first=True)` parameters:
/// `fwd` ↔ `*_l0`, `bwd` ↔ `*_l0_reverse`.
#[derive(Module, Debug)]
pub struct BiLstm {
    pub fwd: LstmDirection,
    pub bwd: LstmDirection,
}

/// The recurrent dialogue encoder (torch name of the LSTM: `lstm`).
#[derive(Module, Debug)]
pub struct DialogueEncoder {
    pub lstm: BiLstm,
}

impl DialogueEncoder {
    /// Summary `[h_fwd(last present turn) ‖ h_bwd(turn 1)]`.
    ///
    /// `lengths[b]` is the number of present turns of sample `b` (they occupy slots
    /// `0..lengths[b]`; the rest is padding, best zeros).
    ///
    /// # Shapes
    /// - `turns`: `[B, T, turn_dim]`
    /// - `lengths`: `B` values in `1..=T`
    /// - output: `[B, 2·hidden]`
    ///
    /// # Errors
    /// [`NnError::BadLengths`] when `lengths` has the wrong count or a value outside `1..=T`.
    pub fn forward(&self, turns: Tensor<3>, lengths: &[usize]) -> Result<Tensor<2>, NnError> {
        let [b, t, _] = turns.dims();
        if lengths.len() != b {
            return Err(NnError::BadLengths(format!(
                "{} lengths for a batch of {b}",
                lengths.len()
            )));
        }
        if let Some((i, &l)) = lengths
            .iter()
            .enumerate()
            .find(|(_, l)| **l == 0 || **l > t)
        {
            return Err(NnError::BadLengths(format!(
                "sample {i} has {l} turns, expected 1..={t}"
            )));
        }
        let pad: Vec<bool> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |s| s >= l))
            .collect();
        let pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [b, t]), &turns.device());
        let h_fwd = self.lstm.fwd.run(turns.clone(), &pad, 0..t);
        let h_bwd = self.lstm.bwd.run(turns, &pad, (0..t).rev());
        Ok(Tensor::cat(vec![h_fwd, h_bwd], 1))
    }
}
