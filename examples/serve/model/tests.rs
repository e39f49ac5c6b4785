//! The real model against expected outputs derived independently (see each test), when the
//! model file is at hand: `.ci/run` fetches it and requires these (`TOKENTRACE_REQUIRE_MODEL`);
//! a plain `cargo test` without it says what it skipped.

use std::sync::OnceLock;

use super::*;

/// The model, loaded once for all the tests of this binary; `None` (and a note) without it.
fn model() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let Some(path) = fetch::cached() else {
                assert!(
                    std::env::var_os("TOKENTRACE_REQUIRE_MODEL").is_none(),
                    "TOKENTRACE_REQUIRE_MODEL is set but {} is not in {}",
                    fetch::FILE,
                    fetch::cache_dir().display()
                );
                eprintln!("skipped: the model is not in {} (`serve fetch-model` puts it there)", fetch::cache_dir().display());
                return None;
            };
            Some(Model::load(&path).expect("the cached model loads"))
        })
        .as_ref()
}

/// Greedy continuation of `prompt` (token ids), up to `max` tokens or a stop token.
fn greedy(model: &Model, prompt: &[u32], max: usize) -> Vec<u32> {
    let mut cache = model.llama.cache().unwrap();
    let mut next = argmax(&model.llama.forward(prompt, &mut cache).unwrap());
    let mut out = vec![next];
    while out.len() < max && !model.tokenizer.stop_tokens.contains(&next) {
        next = argmax(&model.llama.forward(&[next], &mut cache).unwrap());
        out.push(next);
    }
    out
}

#[test]
fn the_capital_of_france_is_paris() {
    let Some(model) = model() else { return };
    let prompt = model.tokenizer.encode(&chat_prompt([("user", "What is the capital of France?")])).unwrap();
    let answer = greedy(model, &prompt, 24);
    let text = model.tokenizer.decode(&answer).unwrap();
    assert_eq!(text, "The capital of France is Paris.", "{answer:?}");
}
