//! Picking each token from the logits as the OpenAI API's parameters ask: greedy at
//! `temperature: 0`, else sampled from the softmax at that temperature, restricted to the
//! smallest set of tokens whose probability reaches `top_p`; `seed` makes it repeatable.

/// A request's sampling parameters and its random state.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    state: u64,
}

impl Sampler {
    /// `temperature` (0: greedy), `top_p` in (0, 1], `seed` (none: a random one).
    pub fn new(temperature: f32, top_p: f32, seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        // splitmix64 of the seed: a well-mixed, non-zero start for the xorshift below.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self { temperature, top_p: top_p.clamp(f32::MIN_POSITIVE, 1.0), state: (z ^ (z >> 31)) | 1 }
    }

    /// The next token.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 || logits.len() < 2 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut weighted: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(token, logit)| (token as u32, ((logit - max) / self.temperature).exp()))
            .collect();
        weighted.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let total: f32 = weighted.iter().map(|(_, w)| w).sum();
        // The nucleus: the most likely tokens until their share reaches top_p.
        let mut kept = 0.0;
        let mut cut = weighted.len();
        for (n, (_, weight)) in weighted.iter().enumerate() {
            kept += weight;
            if kept >= self.top_p * total {
                cut = n + 1;
                break;
            }
        }
        let weighted = &weighted[..cut];
        let mut target = self.uniform() * weighted.iter().map(|(_, w)| w).sum::<f32>();
        for (token, weight) in weighted {
            if target < *weight {
                return *token;
            }
            target -= weight;
        }
        weighted[weighted.len() - 1].0
    }

    /// Skips the draw of one token (another process picked it from the same seed).
    pub fn advance(&mut self) {
        if self.temperature > 0.0 {
            self.uniform();
        }
    }

    /// A uniform number in [0, 1) (xorshift64*).
    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32
    }
}

/// The index of the largest logit (the first of equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, logit) in logits.iter().enumerate() {
        if *logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn temperature_zero_is_greedy_and_a_seed_repeats() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(super::Sampler::new(0.0, 1.0, None).pick(&logits), 1);
        let draw = |seed| {
            let mut sampler = super::Sampler::new(1.0, 1.0, Some(seed));
            (0..64).map(|_| sampler.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).contains(&2), "a close second is drawn sometimes");
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.5 keeps the first alone.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut sampler = super::Sampler::new(1.0, 0.5, Some(1));
        assert!((0..200).all(|_| sampler.pick(&logits) == 0));
        let mut sampler = super::Sampler::new(1.0, 0.9, Some(1));
        let drawn: std::collections::HashSet<u32> = (0..400).map(|_| sampler.pick(&logits)).collect();
        assert_eq!(drawn, [0, 1, 2].into(), "0.64 + 0.24 < 0.9: the third is in, the fourth never");
    }
}
