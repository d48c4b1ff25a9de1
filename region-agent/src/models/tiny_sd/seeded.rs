//! Deterministic random weights for pipeline test models: a `VarBuilder` backend that makes
//! every tensor a network asks for from a seed and the tensor's name, following the layer's
//! own initialisation hint (constant, normal, uniform, Kaiming). The same seed always gives
//! the same network, on any machine and whatever order the layers are built in.
//!
//! Such weights prove that a pipeline runs end to end; what they produce means nothing.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// A small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// FNV-1a of a tensor name, mixed into the seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `count` standard-normal `f32`s from `seed`.
pub fn normal_f32(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..count).map(|_| rng.normal() as f32).collect()
}

struct SeededBackend {
    seed: u64,
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = s.elem_count();
        let mut rng = SplitMix64::new(self.seed ^ name_hash(name));
        let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| lo + (up - lo) * rng.uniform();
        let values: Vec<f32> = match h {
            Init::Const(v) => vec![v as f32; n],
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * rng.normal()) as f32)
                .collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| uniform(&mut rng, lo, up) as f32).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = fan.for_shape(&s);
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => {
                        (0..n).map(|_| (std * rng.normal()) as f32).collect()
                    }
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n)
                            .map(|_| uniform(&mut rng, -bound, bound) as f32)
                            .collect()
                    }
                }
            }
        };
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("seeded weights need the shape of tensor {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` whose every tensor is made from `seed` and its name.
pub fn seeded_var_builder(seed: u64, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SeededBackend { seed }), DType::F32, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_name_give_the_same_tensor() {
        let a = seeded_var_builder(7, &Device::Cpu);
        let b = seeded_var_builder(7, &Device::Cpu);
        let c = seeded_var_builder(8, &Device::Cpu);
        let get = |vb: &VarBuilder<'_>, name: &str| {
            vb.get_with_hints((4, 5), name, candle_nn::init::DEFAULT_KAIMING_NORMAL)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get(&a, "w"), get(&b, "w"));
        assert_ne!(get(&a, "w"), get(&c, "w"));
        assert_ne!(get(&a, "w"), get(&a, "v"));
        let ones = a
            .get_with_hints(3, "norm.weight", Init::Const(1.0))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ones, vec![1.0; 3]);
    }
}
