//! What each model accepts for thinking, kept as data: Gemini 2.5 takes a token budget in a
//! model-specific range, Gemini 3 a `thinkingLevel` from a model-specific set. The gateway's
//! own mappings (OpenAI's `reasoning_effort`) go through [`ThinkingKind::for_model`], so they
//! never send a level or budget the model refuses.
//!
//! ```
//! use tower_gemini::gemini::{ThinkingKind, ThinkingLevel};
//!
//! let kind = ThinkingKind::for_model("gemini-3-pro-preview");
//! // 3 Pro offers low and high: a `medium` request goes up, `minimal` down to the lowest.
//! assert_eq!(kind.nearest_level(ThinkingLevel::Medium), Some(ThinkingLevel::High));
//! assert_eq!(kind.nearest_level(ThinkingLevel::Minimal), Some(ThinkingLevel::Low));
//! // 2.5 Pro cannot turn thinking off: a budget of 0 becomes its minimum.
//! assert_eq!(ThinkingKind::for_model("gemini-2.5-pro").clamp_budget(0), Some(128));
//! ```

use super::path::strip_models_prefix;

/// A Gemini 3 thinking level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThinkingLevel {
    /// `minimal`
    Minimal,
    /// `low`
    Low,
    /// `medium`
    Medium,
    /// `high`
    High,
}

impl ThinkingLevel {
    /// The wire name (`minimal`, `low`, `medium`, `high`).
    pub fn as_str(self) -> &'static str {
        match self {
            ThinkingLevel::Minimal => "minimal",
            ThinkingLevel::Low => "low",
            ThinkingLevel::Medium => "medium",
            ThinkingLevel::High => "high",
        }
    }
}

const ALL_LEVELS: &[ThinkingLevel] = &[
    ThinkingLevel::Minimal,
    ThinkingLevel::Low,
    ThinkingLevel::Medium,
    ThinkingLevel::High,
];
const LOW_HIGH: &[ThinkingLevel] = &[ThinkingLevel::Low, ThinkingLevel::High];
const LOW_MEDIUM_HIGH: &[ThinkingLevel] = &[
    ThinkingLevel::Low,
    ThinkingLevel::Medium,
    ThinkingLevel::High,
];

/// How a model is told how much to think.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThinkingKind {
    /// `thinkingBudget` in tokens: `-1` dynamic, `0` off when `can_turn_off`, else within
    /// `min..=max`.
    Budget {
        /// The smallest positive budget.
        min: i32,
        /// The largest budget.
        max: i32,
        /// Whether `0` (no thinking) is accepted.
        can_turn_off: bool,
    },
    /// `thinkingLevel`, one of `levels` (ascending).
    Levels {
        /// The levels the model offers, lowest first.
        levels: &'static [ThinkingLevel],
    },
}

impl ThinkingKind {
    /// What `model` accepts (with or without `models/`), from Google's published ranges
    /// (2026): 2.5 Pro 128–32,768 and never off; 2.5 Flash 0–24,576; 2.5 Flash-Lite 512–24,576
    /// or off; 3 Pro `low`/`high`; 3 Flash `minimal`/`low`/`medium`/`high`; 3.8 Flash
    /// `low`/`medium`/`high`. Another Gemini 3 model gets the two levels every one accepts
    /// (`low`, `high`); any other model a budget of 0–24,576.
    pub fn for_model(model: &str) -> ThinkingKind {
        let m = strip_models_prefix(model);
        if let Some(rest) = m.strip_prefix("gemini-3") {
            let levels = if rest.starts_with(".8-flash") {
                LOW_MEDIUM_HIGH
            } else if rest.starts_with("-flash") && !rest.starts_with("-flash-lite") {
                ALL_LEVELS
            } else {
                LOW_HIGH
            };
            return ThinkingKind::Levels { levels };
        }
        if m.starts_with("gemini-2.5-pro") {
            ThinkingKind::Budget {
                min: 128,
                max: 32_768,
                can_turn_off: false,
            }
        } else if m.starts_with("gemini-2.5-flash-lite") {
            ThinkingKind::Budget {
                min: 512,
                max: 24_576,
                can_turn_off: true,
            }
        } else {
            ThinkingKind::Budget {
                min: 1,
                max: 24_576,
                can_turn_off: true,
            }
        }
    }

    /// The offered level nearest to `wanted`: the lowest offered at or above it, else the
    /// highest offered. `None` for budget models.
    pub fn nearest_level(&self, wanted: ThinkingLevel) -> Option<ThinkingLevel> {
        let ThinkingKind::Levels { levels } = self else {
            return None;
        };
        levels
            .iter()
            .copied()
            .find(|l| *l >= wanted)
            .or_else(|| levels.last().copied())
    }

    /// The lowest level the model offers. `None` for budget models.
    pub fn lowest_level(&self) -> Option<ThinkingLevel> {
        match self {
            ThinkingKind::Levels { levels } => levels.first().copied(),
            ThinkingKind::Budget { .. } => None,
        }
    }

    /// The offered level for a token budget, for a level model given a budget setting:
    /// `0` → the lowest level, up to 1,024 → `low`, up to 8,192 → `medium`, more → `high`, each
    /// moved to the nearest offered level. `-1` (dynamic) and budget models give `None`.
    pub fn level_for_budget(&self, budget: i32) -> Option<ThinkingLevel> {
        let wanted = match budget {
            -1 => return None,
            0 => return self.lowest_level(),
            b if b <= 1024 => ThinkingLevel::Low,
            b if b <= 8192 => ThinkingLevel::Medium,
            _ => ThinkingLevel::High,
        };
        self.nearest_level(wanted)
    }

    /// `budget` moved into the model's range (`-1`, dynamic, stays). `None` for level models.
    pub fn clamp_budget(&self, budget: i32) -> Option<i32> {
        let ThinkingKind::Budget {
            min,
            max,
            can_turn_off,
        } = *self
        else {
            return None;
        };
        Some(match budget {
            -1 => -1,
            0 if can_turn_off => 0,
            b => b.clamp(min, max),
        })
    }
}

/// Whether `model` is of the Gemini 3 generation, which refuses a function call in the history
/// without its thought signature and accepts Google Search beside function declarations
/// (earlier models refuse that mix).
#[cfg_attr(not(any(feature = "openai", feature = "anthropic")), allow(dead_code))]
pub(crate) fn is_gemini_3(model: &str) -> bool {
    strip_models_prefix(model).starts_with("gemini-3")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_per_model_and_the_nearest_offered() {
        use ThinkingLevel::*;
        let flash = ThinkingKind::for_model("models/gemini-3-flash-preview");
        for l in [Minimal, Low, Medium, High] {
            assert_eq!(flash.nearest_level(l), Some(l));
        }
        let flash_38 = ThinkingKind::for_model("gemini-3.8-flash");
        assert_eq!(flash_38.nearest_level(Minimal), Some(Low));
        assert_eq!(flash_38.nearest_level(Medium), Some(Medium));
        let pro = ThinkingKind::for_model("gemini-3-pro-preview");
        assert_eq!(pro.nearest_level(Minimal), Some(Low));
        assert_eq!(pro.nearest_level(Medium), Some(High));
        assert_eq!(pro.lowest_level(), Some(Low));
        let other = ThinkingKind::for_model("gemini-3.1-flash-lite");
        assert_eq!(other.nearest_level(Medium), Some(High));
        assert_eq!(
            ThinkingKind::for_model("gemini-2.5-flash").nearest_level(Low),
            None
        );
    }

    #[test]
    fn budgets_stay_in_each_models_range() {
        let pro = ThinkingKind::for_model("gemini-2.5-pro");
        assert_eq!(pro.clamp_budget(0), Some(128));
        assert_eq!(pro.clamp_budget(-1), Some(-1));
        assert_eq!(pro.clamp_budget(24_576), Some(24_576));
        let lite = ThinkingKind::for_model("gemini-2.5-flash-lite");
        assert_eq!(lite.clamp_budget(0), Some(0));
        assert_eq!(lite.clamp_budget(100), Some(512));
        let flash = ThinkingKind::for_model("gemini-2.5-flash");
        assert_eq!(flash.clamp_budget(40_000), Some(24_576));
        assert_eq!(
            ThinkingKind::for_model("gemini-3-pro").clamp_budget(0),
            None
        );
        let pro3 = ThinkingKind::for_model("gemini-3-pro");
        assert_eq!(pro3.level_for_budget(0), Some(ThinkingLevel::Low));
        assert_eq!(pro3.level_for_budget(4096), Some(ThinkingLevel::High));
        assert_eq!(pro3.level_for_budget(-1), None);
        let flash3 = ThinkingKind::for_model("gemini-3-flash");
        assert_eq!(flash3.level_for_budget(0), Some(ThinkingLevel::Minimal));
        assert_eq!(flash3.level_for_budget(4096), Some(ThinkingLevel::Medium));
        assert_eq!(flash.level_for_budget(4096), None);
    }
}
