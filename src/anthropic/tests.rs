//! Unit tests of the Anthropic front.
