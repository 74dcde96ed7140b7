//! The relay: forwards a Gemini stream event by event and resumes it when it breaks.
//!
//! - `body`: the [`Relay`](body::Relay) body the client reads, which drives the attempts;
//! - `request`: the stream format, and the original request again or a continuation of it;
//! - `attempt`: reading one upstream answer's events, and why it ended early;
//! - `event`: reading, rewriting and forwarding one event;
//! - `answer`: what the relay knows of the answer so far: the text sent, usage, the seam;
//! - `output`: writing events to the client in the stream's format;
//! - `unary`: retrying a whole `:generateContent` answer.

mod answer;
mod attempt;
mod body;
mod event;
mod output;
mod request;
mod unary;

pub(crate) use body::respond;
pub(crate) use request::{Mode, RequestTemplate, call};
pub(crate) use unary::retry_unary;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
