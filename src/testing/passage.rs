//! Deterministic, real-looking answer text for FakeGemini.

/// Sentences the fake's answers are made of: plain English on a few everyday topics.
const CORPUS: &[&str] = &[
    "Rivers begin as small streams high in the hills, fed by rain and melting snow.",
    "As they flow downhill, they gather water from many smaller tributaries.",
    "The speed of the current shapes the valley, carving deep channels over thousands of years.",
    "Near the sea, a river slows down and drops the sand and silt it has carried.",
    "These deposits build wide deltas, which are often among the most fertile lands on Earth.",
    "Bread is one of the oldest prepared foods, made for at least ten thousand years.",
    "Yeast feeds on the sugars in flour and releases carbon dioxide, which makes the dough rise.",
    "Kneading develops gluten, a network of proteins that traps the gas and gives bread its structure.",
    "A hot oven sets the crumb quickly while the crust browns through the Maillard reaction.",
    "Letting the loaf cool before slicing keeps the inside from turning gummy.",
    "A good night's sleep follows cycles of light and deep stages that repeat about every ninety minutes.",
    "During deep sleep the body repairs tissue and the brain clears waste products.",
    "Dreams happen mostly in the rapid eye movement stage, when the brain is very active.",
    "Keeping a regular schedule is one of the simplest ways to sleep better.",
    "Bright screens late in the evening can delay the release of melatonin.",
    "Compilers translate source code into instructions a machine can run.",
    "A type checker catches many mistakes before the program ever starts.",
    "Careful error handling turns surprising failures into clear messages for the user.",
    "Tests written alongside the code make later changes much less frightening.",
    "Small functions with clear names are easier to read than long clever ones.",
    "Bees communicate the direction of flowers through a waggle dance inside the hive.",
    "A single colony can visit millions of blossoms to make one jar of honey.",
    "Pollination by bees supports a large share of the crops people eat.",
    "Wild bees, not only honeybees, do much of this quiet and essential work.",
    "Planting native flowers is an easy way to help them in a city garden.",
    "Light from the Sun takes a little over eight minutes to reach the Earth.",
    "The Moon keeps the same face toward us because its rotation is locked to its orbit.",
    "Tides rise and fall as the Moon and the Sun pull on the oceans.",
    "On a clear night far from towns, thousands of stars are visible to the naked eye.",
    "The band of the Milky Way is the light of our own galaxy seen edge on.",
];

const THOUGHTS: &[&str] = &[
    "**Understanding the question** The user wants a clear explanation, so I will start from the basics.",
    "**Planning the answer** I will describe the main idea first and then add two or three details.",
    "**Checking the facts** Each statement should be simple and correct.",
];

fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The deterministic answer to a prompt: a paragraph on one topic and a shorter one on the
/// next, chosen by a hash of the prompt (6 to 9 sentences).
pub(crate) fn passage(prompt: &str) -> String {
    let h = fnv(prompt);
    let topic = (h % 6) as usize;
    let count = 6 + (h >> 8) as usize % 4;
    let mut out = String::new();
    for i in 0..count {
        let s = CORPUS[(topic * 5 + i) % CORPUS.len()];
        if i == 5 {
            out.push_str("\n\n");
        } else if i > 0 {
            out.push(' ');
        }
        out.push_str(s);
    }
    out
}

/// The deterministic thought text for a prompt.
pub(crate) fn thoughts(prompt: &str) -> Vec<String> {
    let _ = prompt;
    THOUGHTS.iter().map(|s| (*s).to_owned()).collect()
}

/// Splits text into chunks of `words` words each; the chunks concatenate to `text` exactly.
/// Two or three deterministic web sources for a prompt, as Google's grounding redirect links.
pub(crate) fn grounding_sources(prompt: &str) -> Vec<(String, String)> {
    const SITES: &[&str] = &[
        "en.wikipedia.org",
        "britannica.com",
        "nationalgeographic.com",
        "nasa.gov",
        "bbc.co.uk",
    ];
    let h = fnv(prompt);
    let n = 2 + (h % 2) as usize;
    (0..n)
        .map(|i| {
            let site = SITES[(h as usize + i) % SITES.len()];
            let uri = format!(
                "https://vertexaisearch.cloud.google.com/grounding-api-redirect/fake-{:08x}-{i}",
                (h >> 8) as u32
            );
            (site.to_owned(), uri)
        })
        .collect()
}

pub(crate) fn chunks(text: &str, words: usize) -> Vec<String> {
    let words = words.max(1);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut count = 0;
    for (i, piece) in text.split_inclusive(' ').enumerate() {
        let _ = i;
        current.push_str(piece);
        count += 1;
        if count == words {
            out.push(std::mem::take(&mut current));
            count = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// A rough token count: about four characters a token, at least one for non-empty text.
pub(crate) fn tokens(text: &str) -> u64 {
    if text.is_empty() {
        0
    } else {
        (text.chars().count() as u64).div_ceil(4)
    }
}

/// A deterministic unit-length embedding of `dims` dimensions for a text.
pub(crate) fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut state = fnv(text) | 1;
    let mut v: Vec<f32> = (0..dims.max(1))
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_deterministic_and_differ_by_prompt() {
        assert_eq!(passage("hi"), passage("hi"));
        assert!(passage("hi").len() > 200);
        let all: std::collections::HashSet<String> =
            (0..20).map(|i| passage(&format!("p{i}"))).collect();
        assert!(all.len() > 3);
    }

    #[test]
    fn chunks_concatenate_to_the_text() {
        let p = passage("rivers");
        for n in 1..8 {
            assert_eq!(chunks(&p, n).concat(), p);
        }
    }

    #[test]
    fn embeddings_are_unit_length() {
        let e = embedding("abc", 768);
        let n: f32 = e.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-3);
        assert_eq!(e, embedding("abc", 768));
    }
}
