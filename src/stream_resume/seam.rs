//! De-duplicating the seam between what was sent and a continuation.

/// Overlaps this long count even when they start inside a word.
const LONG_OVERLAP: usize = 24;

/// The number of bytes at the start of `continuation` that repeat the end of `sent`: the
/// longest such overlap that is at least `min` characters and starts at a word boundary of
/// `sent` (or is at least 24 characters long). 0 when there is none.
///
/// Models repeat whole words; chance matches do not respect words. After `"the sand "`, a
/// continuation `"and silt"` matches `"and "` only inside `"sand"`, and is kept.
pub(crate) fn overlap(sent: &str, continuation: &str, min: usize) -> usize {
    let max = sent.len().min(continuation.len());
    let mut best = 0;
    let ends = continuation
        .char_indices()
        .skip(1)
        .map(|(i, _)| i)
        .chain(std::iter::once(continuation.len()));
    for k in ends {
        if k > max {
            break;
        }
        let candidate = &continuation[..k];
        if !sent.ends_with(candidate) {
            continue;
        }
        let chars = candidate.chars().count();
        let start = sent.len() - k;
        let at_word_start = sent[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric())
            || !candidate.chars().next().is_some_and(char::is_alphanumeric);
        if chars >= min && (at_word_start || chars >= LONG_OVERLAP) {
            best = k;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_repeated_tail() {
        assert_eq!(overlap("The river flows", "flows into the sea", 4), 5);
        assert_eq!(overlap("abc", "abc", 1), 3);
    }

    #[test]
    fn ignores_matches_inside_a_word() {
        assert_eq!(overlap("drops the sand ", "and silt", 4), 0);
        assert_eq!(overlap("drops the sand ", "sand and silt", 4), 5);
    }

    #[test]
    fn ignores_short_chance_matches() {
        assert_eq!(overlap("hel", "lo world", 4), 0);
        assert_eq!(overlap("The river", " flows", 4), 0);
    }

    #[test]
    fn respects_char_boundaries() {
        assert_eq!(
            overlap("café au lait", "au lait, merci", 4),
            "au lait".len()
        );
        assert_eq!(
            overlap("café au lait", "é au lait, merci", 4),
            0,
            "starts inside a word"
        );
        assert_eq!(
            overlap("日本語の文。テキスト", "テキストです", 2),
            "テキスト".len()
        );
    }
}
