//! A deterministic Euler sampler (diffusers' `EulerDiscreteScheduler` with "trailing"
//! timestep spacing), so that the same seed always gives the same image: candle's ancestral
//! and DDPM schedulers draw fresh noise from an unseeded generator at every step.
//!
//! Trailing spacing starts at the last training timestep, which is what few-step models
//! (SD-Turbo: 1–4 steps) need, and works for the classic models at 20–50 steps.

use serde::Deserialize;

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise (SD 1.x, SD-Turbo).
    #[default]
    Epsilon,
    /// The "velocity" (SD 2.x 768).
    VPrediction,
}

/// The noise schedule the model was trained with (diffusers `scheduler_config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NoiseSchedule {
    /// Training timesteps (1000).
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    /// First beta (0.00085).
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// Last beta (0.012).
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// What the network predicts.
    #[serde(default)]
    pub prediction_type: Prediction,
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.00085
}
fn default_beta_end() -> f64 {
    0.012
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        Self {
            num_train_timesteps: default_train_steps(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            prediction_type: Prediction::Epsilon,
        }
    }
}

/// The timesteps and noise levels of one sampling run.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerSampler {
    /// The training timestep of each step, from noisiest.
    pub timesteps: Vec<usize>,
    /// σ at each step, then a final 0.
    pub sigmas: Vec<f64>,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl EulerSampler {
    /// The plan for `steps` steps (at least 1) over a scaled-linear beta schedule.
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let t_max = schedule.num_train_timesteps.max(1);
        let steps = steps.clamp(1, t_max);
        let (b0, b1) = (schedule.beta_start.sqrt(), schedule.beta_end.sqrt());
        let mut cumprod = 1.0;
        let all_sigmas: Vec<f64> = (0..t_max)
            .map(|i| {
                let frac = if t_max > 1 {
                    i as f64 / (t_max - 1) as f64
                } else {
                    0.0
                };
                let beta = (b0 + (b1 - b0) * frac).powi(2);
                cumprod *= 1.0 - beta;
                ((1.0 - cumprod) / cumprod).sqrt()
            })
            .collect();
        let ratio = t_max as f64 / steps as f64;
        let timesteps: Vec<usize> = (0..steps)
            .map(|i| ((t_max as f64 - i as f64 * ratio).round() as usize).saturating_sub(1))
            .collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| all_sigmas[t]).collect();
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            prediction: schedule.prediction_type,
        }
    }

    /// How much the initial noise is scaled (σ of the first step).
    pub fn init_noise_sigma(&self) -> f64 {
        self.sigmas[0]
    }

    /// The factor the latents are scaled by before the network sees them at step `i`.
    pub fn input_scale(&self, i: usize) -> f64 {
        1.0 / (self.sigmas[i].powi(2) + 1.0).sqrt()
    }

    /// The coefficients `(a, b)` of one Euler step: `next = a · latents + b · model_output`.
    pub fn step_coefficients(&self, i: usize) -> (f64, f64) {
        let (s, next) = (self.sigmas[i], self.sigmas[i + 1]);
        // denoised = c_x · x + c_o · output; next = x + (x − denoised) / σ · (next − σ)
        let (c_x, c_o) = match self.prediction {
            Prediction::Epsilon => (1.0, -s),
            Prediction::VPrediction => {
                let d = s * s + 1.0;
                (1.0 / d, -s / d.sqrt())
            }
        };
        let k = (next - s) / s;
        (1.0 + k * (1.0 - c_x), -k * c_o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_spacing_starts_at_the_last_timestep() {
        let s = EulerSampler::new(&NoiseSchedule::default(), 4);
        assert_eq!(s.timesteps, vec![999, 749, 499, 249]);
        assert_eq!(s.sigmas.len(), 5);
        assert_eq!(s.sigmas[4], 0.0);
        assert!(s.sigmas.windows(2).all(|w| w[0] > w[1]));
        // SD's schedule: σ at t = 999 is about 14.6.
        assert!(
            (s.init_noise_sigma() - 14.6).abs() < 0.1,
            "{}",
            s.init_noise_sigma()
        );
        assert_eq!(
            EulerSampler::new(&NoiseSchedule::default(), 1).timesteps,
            vec![999]
        );
    }

    #[test]
    fn the_last_step_lands_on_the_denoised_estimate() {
        let s = EulerSampler::new(&NoiseSchedule::default(), 1);
        let sigma = s.sigmas[0];
        let (a, b) = s.step_coefficients(0);
        // σ_next = 0: next = x − σ·ε for ε-prediction.
        assert!((a - 1.0).abs() < 1e-12);
        assert!((b + sigma).abs() < 1e-9);
    }
}
