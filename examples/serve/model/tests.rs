//! The real model against expected outputs derived independently (see each test), when the
//! model file is at hand: `.ci/run` fetches it and requires these (`TOKENTRACE_REQUIRE_MODEL`);
//! a plain `cargo test` without it says what it skipped.

use std::sync::OnceLock;

use super::*;
use crate::sampling::argmax;

/// The cached model's file; `None` (and a note) without it, unless `TOKENTRACE_REQUIRE_MODEL`
/// says the tests must have it.
pub(crate) fn cached_model() -> Option<std::path::PathBuf> {
    let path = fetch::cached();
    if path.is_none() {
        assert!(
            std::env::var_os("TOKENTRACE_REQUIRE_MODEL").is_none(),
            "TOKENTRACE_REQUIRE_MODEL is set but {} is not in {}",
            fetch::FILE,
            fetch::cache_dir().display()
        );
        eprintln!(
            "skipped: the model is not in {} (`serve fetch-model` puts it there)",
            fetch::cache_dir().display()
        );
    }
    path
}

/// The model, loaded once for all the tests of this binary; `None` (and a note) without it.
fn model() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL.get_or_init(|| Some(Model::load(&cached_model()?).expect("the cached model loads"))).as_ref()
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

/// Encodings from a reference written apart from this one (GPT-2's byte-level BPE from the
/// algorithm, in Python, over the same file's vocabulary and merges, with SmolLM's digit split
/// and the file's control tokens): ASCII, digits, non-ASCII, special tokens, whitespace runs.
#[test]
fn the_tokenizer_matches_an_independent_reference() {
    let Some(model) = model() else { return };
    let cases: [(&str, &[u32]); 5] = [
        ("Hello, world!", &[19556, 28, 905, 17]),
        (
            "Prices rose 12.5% in 2024.",
            &[64, 12855, 8739, 216, 33, 34, 30, 37, 21, 281, 216, 34, 32, 34, 36, 30],
        ),
        (
            "Café über naïve — 東京 🚀",
            &[
                51, 1939, 2756, 5549, 137, 593, 15486, 46494, 1841, 17097, 247, 126, 16736, 122, 15107, 244,
                218,
            ],
        ),
        ("<|im_start|>user\nHi<|im_end|>", &[1, 4093, 198, 26843, 2]),
        ("  two  spaces\tand tab", &[216, 827, 216, 5600, 197, 397, 10147]),
    ];
    for (text, ids) in cases {
        assert_eq!(model.tokenizer.encode(text).unwrap(), ids, "{text:?}");
        let round_trip = model.tokenizer.decode(ids).unwrap();
        let expected = text.replace("<|im_start|>", "").replace("<|im_end|>", "");
        assert_eq!(round_trip, expected, "special tokens are left out of decoded text");
    }
    assert_eq!(model.tokenizer.stop_tokens, [0, 2], "<|endoftext|> and <|im_end|>");
}

/// Text handed out token by token: a character split over two tokens comes out whole, once.
#[test]
fn detokenizing_token_by_token_gives_the_whole_text_once() {
    let Some(model) = model() else { return };
    let ids = model.tokenizer.encode("Café über naïve — 東京 🚀").unwrap();
    let mut detokenizer = Detokenizer::new();
    let pieces: Vec<String> = ids.iter().map(|id| detokenizer.push(&model.tokenizer, *id).unwrap()).collect();
    assert_eq!(pieces.concat(), "Café über naïve — 東京 🚀");
    assert!(pieces.iter().any(String::is_empty), "some token ended inside a character: {pieces:?}");
}

/// The chat-templated prompt of one user question, as the independent tokenizer encodes it
/// (the template's default system message, then the question, then the assistant's turn).
fn templated(question: &[u32]) -> Vec<u32> {
    let system = [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
        8182, 2, 198, 1, 4093, 198,
    ];
    [&system[..], question, &[2, 198, 1, 520, 9531, 198]].concat()
}

/// A question, its prompt ids, the first five logits and the greedy answer's ids.
type Case = (&'static str, Vec<u32>, [f32; 5], &'static [u32]);

/// Greedy continuations and the first logits, against another implementation of the model:
/// candle-transformers' `quantized_llama` with every weight dequantized
/// (`CANDLE_DEQUANTIZE_ALL=1`), run on the same file and the same prompt ids (those of the
/// independent tokenizer above). Logits within 0.01.
#[test]
fn greedy_answers_match_another_implementation() {
    let Some(model) = model() else { return };
    let cases: [Case; 3] = [
        (
            "What is the capital of France?",
            templated(&[1780, 314, 260, 3575, 282, 4649, 47]),
            [10.166016, 6.2121067, 6.837079, 6.2550716, 5.384857],
            &[504, 3575, 282, 4649, 314, 7042, 30, 2],
        ),
        (
            "Name three primary colors.",
            templated(&[5820, 1296, 3003, 4683, 30]),
            [15.205094, 16.601357, 18.33642, 13.678526, 12.906123],
            &[504, 3003, 4683, 359, 42, 3950, 28, 10062, 28, 284, 13581, 30, 2],
        ),
        (
            "Write a haiku about the sea.",
            templated(&[19161, 253, 421, 30614, 563, 260, 3426, 30]),
            [12.273434, 9.968445, 9.427027, 9.426863, 8.313892],
            &[
                504, 6147, 282, 260, 3426, 28, 253, 13879, 6122, 28, 198, 49, 9154, 303, 5082, 282, 260,
                10393, 28, 198, 49, 13151, 282, 260, 6122, 338, 5721, 8823, 28, 198, 49, 13151, 282, 260,
                5065, 506, 1149, 30, 2,
            ],
        ),
    ];
    for (question, prompt, first_logits, answer) in cases {
        let ours = model.tokenizer.encode(&chat_prompt([("user", question)])).unwrap();
        assert_eq!(ours, prompt, "{question}: the template and tokenizer give the reference's prompt");
        let logits = model.llama.forward(&prompt, &mut model.llama.cache().unwrap()).unwrap();
        for (ours, theirs) in logits.iter().zip(first_logits) {
            assert!(
                (ours - theirs).abs() < 0.01,
                "{question}: logits {:?} vs {first_logits:?}",
                &logits[..5]
            );
        }
        assert_eq!(greedy(model, &prompt, 64), answer, "{question}");
    }
}

/// A file that is not a GGUF model, or one cut short, is a clear error at load, not a panic.
#[test]
fn a_corrupt_or_truncated_model_file_is_a_clear_error() {
    let Some(path) = fetch::cached() else { return };
    let dir = std::env::temp_dir().join(format!("tokentrace-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_gguf = dir.join("not.gguf");
    std::fs::write(&not_gguf, b"this is not a model").unwrap();
    // The worker's engine and the frontend's tokenizer each refuse it.
    for error in [ModelEngine::load(&not_gguf).err(), ModelTokenizer::load(&not_gguf).err()] {
        let error = error.expect("refused");
        assert!(error.0.contains("is not a readable GGUF file"), "{error}");
    }

    let bytes = std::fs::read(&path).unwrap();
    for cut in [4 << 20, bytes.len() - 1000] {
        let truncated = dir.join(format!("cut-{cut}.gguf"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let error = ModelEngine::load(&truncated).err().expect("refused");
        assert!(error.0.contains(&truncated.display().to_string()), "names the file: {error}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
