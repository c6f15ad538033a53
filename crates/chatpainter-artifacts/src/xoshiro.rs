//! Seeded, checkpointable random numbers: xoshiro256** streams, seeded by the workspace's
//! SplitMix64 ([`crate::SplitMix`]).
//!
//! Every random choice of the training loop (epoch order, crops, flips, caption picks, noise and
//! the CA's eps) comes from one of these generators, whose whole state is four `u64`s that a
//! checkpoint stores. Burn's device RNG is used only to initialise the networks, so a resumed run
//! draws exactly the numbers an uninterrupted run would.

use crate::SplitMix;
use serde::{Deserialize, Serialize};

/// xoshiro256** 1.0 (Blackman & Vigna). The state is public so that it serialises as-is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xoshiro256 {
    pub s: [u64; 4],
}

impl Xoshiro256 {
    /// A generator for stream `stream` of `seed`: different streams are independent.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut sm = SplitMix::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut s = [0u64; 4];
        for w in &mut s {
            *w = sm.next_u64();
        }
        if s == [0; 4] {
            s[0] = 1; // the all-zero state is a fixed point
        }
        Self { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, n)` (Lemire's multiply-shift with rejection, unbiased). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        loop {
            let x = self.next_u64();
            let m = u128::from(x) * u128::from(n);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// `n` draws from N(0, 1) (Box–Muller, both outputs used).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            // 1 - u keeps the log argument in (0, 1].
            let u1 = 1.0 - self.next_f64();
            let u2 = self.next_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_streams_differ() {
        let mut a = Xoshiro256::new(7, 0);
        for _ in 0..10 {
            a.next_u64();
        }
        let json = serde_json::to_string(&a).expect("serialise");
        let mut b: Xoshiro256 = serde_json::from_str(&json).expect("parse");
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Xoshiro256::new(7, 0), Xoshiro256::new(7, 1));
    }

    #[test]
    fn draws_are_in_range_and_roughly_normal() {
        let mut r = Xoshiro256::new(1, 2);
        assert!((0..1000).all(|_| r.below(13) < 13));
        let v = r.normals(20_001);
        assert_eq!(v.len(), 20_001);
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|x| (f64::from(*x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        let mut p: Vec<u32> = (0..50).collect();
        r.shuffle(&mut p);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(p, s);
    }
}
